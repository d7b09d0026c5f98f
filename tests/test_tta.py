"""Label smoothing and flip test-time augmentation (E5's recipe): what they change, and that
evaluation and the exported model apply the TTA the checkpoint was validated with."""

import dataclasses

import pytest
import torch

from cnnlab.checkpoint import inference_model, load_checkpoint, model_from_checkpoint, checkpoint_tta
from cnnlab.config import ConfigError, load_config
from cnnlab.export import export_onnx, onnx_parity
from cnnlab.runtime import resolve_runtime
from cnnlab.train import BatchTransform, predict

from .conftest import PROJECT_ROOT, fit_run


def with_train(config, **changes):
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


def fp32_predict(payload, images, tta):
    norm = payload["normalization"]
    transform = BatchTransform(norm["mean"], norm["std"], resolve_runtime("cpu", "fp32"))
    return predict(model_from_checkpoint(payload), images, transform, 256, tta)


def mean_confidence(payload, images) -> float:
    logits, _ = fp32_predict(payload, images, "none")
    return logits.softmax(1).max(1).values.mean().item()


def test_label_smoothing_caps_the_models_confidence(tiny_config, trained, mnist_small):
    plain = trained
    smoothed = fit_run(dataclasses.replace(with_train(tiny_config, label_smoothing=0.5),
                                       models_dir=str(tiny_config.model_dir.parent) + "_smoothed"), mnist_small)
    assert smoothed.best_val_accuracy > 0.8  # still learns
    images = mnist_small.x_val[:1000]
    # Smoothing 0.5 puts the target at 0.55 for the true class, so the softmax stops short of 1.
    capped = mean_confidence(load_checkpoint(smoothed.best_path), images)
    assert capped < 0.6  # measured 0.38 (plain: 0.79)
    assert mean_confidence(load_checkpoint(plain.best_path), images) > capped + 0.15


def test_label_smoothing_outside_zero_to_one_is_refused():
    with pytest.raises(ConfigError, match=r"train.label_smoothing: 1.5 is not allowed; it must be in \[0, 1\)"):
        load_config(PROJECT_ROOT / "params.yaml", ["train.label_smoothing=1.5"])
    with pytest.raises(ConfigError, match="train.tta.*'none', 'hflip'"):
        load_config(PROJECT_ROOT / "params.yaml", ["train.tta=rotate"])


def test_flip_tta_averages_the_image_and_its_mirror(trained, mnist_small):
    payload = load_checkpoint(trained.best_path)
    images = mnist_small.x_test[:300]
    plain, features = fp32_predict(payload, images, "none")
    mirrored, _ = fp32_predict(payload, images.flip(3), "none")
    averaged, tta_features = fp32_predict(payload, images, "hflip")
    torch.testing.assert_close(averaged, (plain + mirrored) / 2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tta_features, features)  # t-SNE reads the image's own features
    assert not torch.allclose(plain, mirrored, atol=1e-3)  # digits are not mirror-symmetric


def test_tta_checkpoint_exports_a_flip_invariant_model_with_parity(tiny_config, mnist_small, tmp_path):
    result = fit_run(with_train(tiny_config, tta="hflip"), mnist_small)
    payload = load_checkpoint(result.best_path)
    assert checkpoint_tta(payload) == "hflip"
    module = inference_model(payload)
    images = mnist_small.x_test[:500]
    pixels = images.float() / 255.0
    with torch.no_grad():
        exported_logits = module(pixels)
        torch.testing.assert_close(module(pixels.flip(3)), exported_logits, atol=1e-5, rtol=1e-5)
    # The served model gives what evaluation (predict with the checkpoint's TTA) reports.
    evaluated, _ = fp32_predict(payload, images, checkpoint_tta(payload))
    torch.testing.assert_close(exported_logits, evaluated, atol=1e-4, rtol=1e-4)
    path = export_onnx(module, (1, 28, 28), tmp_path / "tta.onnx")
    assert onnx_parity(module, path, images, 1e-4, 1.0).passed


def test_checkpoints_without_a_tta_setting_evaluate_plainly():
    assert checkpoint_tta({"config": {"train": {}}}) == "none"
    assert checkpoint_tta({}) == "none"
