"""ONNX export: checker, onnxruntime parity on real images, and a parity failure."""

import onnx
import pytest
import torch

from cnnlab.checkpoint import InferenceModel, inference_model, load_checkpoint
from cnnlab.export import export_onnx, onnx_parity
from cnnlab.models import create_model, list_models, model_entry


def test_trained_model_parity_on_real_test_images(trained, mnist_small, tmp_path):
    module = inference_model(load_checkpoint(trained.best_path))
    path = export_onnx(module, (1, 28, 28), tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx.data").exists()  # one self-contained file
    onnx.checker.check_model(onnx.load(str(path)))
    report = onnx_parity(module, path, mnist_small.x_test, max_abs_diff=1e-4, min_argmax_agreement=1.0)
    assert report.samples == len(mnist_small.y_test) and report.passed
    assert report.max_abs_diff <= 1e-4 and report.argmax_agreement == 1.0


def test_parity_detects_a_model_that_differs(tmp_path, mnist_small):
    module = InferenceModel(create_model("simple_cnn"), [0.13], [0.31]).eval()
    path = export_onnx(module, (1, 28, 28), tmp_path / "model.onnx")
    with torch.no_grad():
        module.model.fc2.bias.add_(1.0)  # PyTorch now differs from the exported graph
    report = onnx_parity(module, path, mnist_small.x_test[:500], 1e-4, 1.0)
    assert not report.passed and report.max_abs_diff == pytest.approx(1.0, abs=1e-3)


FULL_SIZE = {"alexnet", "resnet18", "resnet50", "efficientnet_lite0", "reduced_alexnet"}  # 224 px or millions of weights


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in FULL_SIZE else n
                                  for n in list_models()])
def test_every_registered_model_exports_with_parity(name, tmp_path):
    entry = model_entry(name)
    module = InferenceModel(create_model(name), [0.5] * entry.input_shape[0], [0.25] * entry.input_shape[0])
    path = export_onnx(module, entry.input_shape, tmp_path / f"{name}.onnx")
    images = torch.randint(0, 256, (64, *entry.input_shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert onnx_parity(module, path, images, 1e-4, 1.0).passed
