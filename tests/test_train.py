"""The trainer on small real MNIST: learns, checkpoints, resumes, fails loudly."""

import dataclasses

import pytest
import torch

from cnnlab.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from cnnlab.config import AugmentConfig, HardBatchMiningConfig
from cnnlab import runtime
from cnnlab.ema import WeightAverage
from cnnlab.tensor_augment import augment_batch, cutout, mix_batch
from cnnlab.train import TrainingDiverged, make_optimizer
from cnnlab.models import create_model

from .conftest import fit_run


def with_train(config, **changes):
    return dataclasses.replace(config, train=dataclasses.replace(config.train, **changes))


def test_short_real_run_beats_chance_by_a_wide_margin(trained):
    result = trained
    assert result.best_val_accuracy > 0.8  # chance is 0.10; 0.847 measured on 400 embedded val digits
    assert result.trainable_parameters == result.total_parameters == 813_802
    assert len(result.history) == 1 and len(result.batch_losses) == 24  # 3,000 / 128 batches
    assert result.batch_losses[-1] < result.batch_losses[0]
    assert {"train_loss", "val_accuracy", "lr", "epoch_seconds"} <= set(result.history[0])


def test_checkpoint_rebuilds_the_model_alone(trained, mnist_small):
    result = trained
    payload = load_checkpoint(result.best_path)
    assert payload["config"]["train"]["epochs"] == 1
    model = model_from_checkpoint(payload)
    x = (mnist_small.x_val[:256].float() / 255 - payload["normalization"]["mean"][0]) / payload["normalization"]["std"][0]
    accuracy = (model(x)[0].argmax(1) == mnist_small.y_val[:256]).float().mean()
    assert accuracy > 0.8


def test_resume_continues_to_the_new_total(tiny_config, mnist_small):
    first = fit_run(tiny_config, mnist_small)
    resumed = fit_run(with_train(tiny_config, epochs=2, resume_from=str(first.last_path)), mnist_small)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    assert len(resumed.batch_losses) == 48
    with pytest.raises(ValueError, match="already has 2 epochs"):
        fit_run(with_train(tiny_config, epochs=2, resume_from=str(resumed.last_path)), mnist_small)


class StopAfter:
    """An epoch listener that interrupts training, as Ctrl-C would, once ``epoch`` is saved."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, record):
        if record["epoch"] == self.epoch:
            raise KeyboardInterrupt


def test_interrupted_then_resumed_run_ends_bit_identical(tiny_config, mnist_small, tmp_path):
    """Dropout (global RNG), crop/flip/cutout/mixup (data generator), a cosine schedule, the
    weight average and hard-batch mining all carry state across epochs: resuming must restore
    every one of them."""
    config = with_train(tiny_config, epochs=3, scheduler="cosine", mixup_alpha=0.2, ema_decay=0.9,
                        augment=AugmentConfig(crop_padding=2, hflip=True, cutout=8),
                        hard_batch_mining=HardBatchMiningConfig(start_epoch=2, fraction=0.1))
    whole = fit_run(dataclasses.replace(config, models_dir=str(tmp_path / "whole")), mnist_small)
    interrupted = dataclasses.replace(config, models_dir=str(tmp_path / "interrupted"))
    with pytest.raises(KeyboardInterrupt):
        fit_run(interrupted, mnist_small, StopAfter(2))
    resumed = fit_run(with_train(interrupted, resume_from=str(tmp_path / "interrupted" / interrupted.name / "last.pt")),
                      mnist_small)
    assert resumed.history == [dict(h, epoch_seconds=r["epoch_seconds"], train_images_per_second=r[
        "train_images_per_second"]) for h, r in zip(whole.history, resumed.history)]
    assert resumed.batch_losses == whole.batch_losses
    for name in ("best.pt", "last.pt"):
        expected, actual = load_checkpoint(whole.best_path.parent / name), load_checkpoint(resumed.best_path.parent / name)
        assert expected["epoch"] == actual["epoch"]
        assert expected["state_dict"].keys() == actual["state_dict"].keys()
        assert all(torch.equal(expected["state_dict"][k], actual["state_dict"][k]) for k in expected["state_dict"])
    averaged = load_checkpoint(resumed.last_path)["weight_average"]
    assert averaged["updates"] == len(resumed.batch_losses)  # one update per optimizer step, resumed ones too


def test_resume_needs_a_last_checkpoint(tiny_config, trained, mnist_small):
    with pytest.raises(CheckpointError, match="no optimizer state"):
        fit_run(with_train(tiny_config, epochs=2, resume_from=str(trained.best_path)), mnist_small)


def test_diverging_loss_fails_with_advice_and_keeps_checkpoints(tiny_config, mnist_small):
    good = fit_run(tiny_config, mnist_small)
    before = good.last_path.read_bytes()
    diverging = with_train(tiny_config, optimizer="sgd", lr=1e6, momentum=0.9)
    with pytest.raises(TrainingDiverged, match="lower train.lr"):
        fit_run(diverging, mnist_small)
    assert good.last_path.read_bytes() == before


@pytest.mark.parametrize("bf16", [True, False])
def test_a_nan_loss_under_bf16_suggests_fp32(tmp_path, bf16):
    from cnnlab.config import TrainConfig
    from cnnlab.train import _check_finite

    with pytest.raises(TrainingDiverged, match="lower train.lr") as raised:
        _check_finite(float("nan"), 1, 2, TrainConfig(), tmp_path / "last.pt", bf16)
    assert ("-S train.precision=fp32" in str(raised.value)) == bf16


def test_resume_with_another_optimizer_is_refused(tiny_config, trained, mnist_small):
    with pytest.raises(ValueError, match="resume with train.optimizer=adam"):
        fit_run(with_train(tiny_config, epochs=2, optimizer="sgd", resume_from=str(trained.last_path)), mnist_small)


def test_weight_decay_on_selected_layers(mnist_small):
    from cnnlab.config import TrainConfig

    model = create_model("simple_cnn")
    opt = make_optimizer(model, TrainConfig(weight_decay=0.01, weight_decay_layers=["fc1"]))
    decayed = [g for g in opt.param_groups if g["weight_decay"] > 0][0]["params"]
    assert {id(p) for p in decayed} == {id(model.fc1.weight), id(model.fc1.bias)}
    with pytest.raises(ValueError, match="match no parameter.*fc1"):
        make_optimizer(model, TrainConfig(weight_decay=0.01, weight_decay_layers=["dense9"]))


def test_augmentation_keeps_shape_and_changes_pixels(mnist_small):
    x = mnist_small.x_train[:64].float()
    gen = torch.Generator().manual_seed(0)
    out = augment_batch(x, AugmentConfig(crop_padding=4, hflip=True, rotation_degrees=15), gen)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert not torch.equal(out, x)
    assert torch.equal(augment_batch(x, AugmentConfig(), gen), x)  # all off: identity


def test_random_crop_is_a_shift_of_the_padded_image():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(8, 1, 1, 1)
    out = augment_batch(x, AugmentConfig(crop_padding=1), torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x[0], (1, 1, 1, 1))
    windows = {tuple(padded[0, i:i + 4, j:j + 4].flatten().tolist()) for i in range(3) for j in range(3)}
    assert all(tuple(o[0].flatten().tolist()) in windows for o in out)


def test_cutout_sets_one_square_per_image_to_the_mean():
    x = torch.ones(64, 3, 28, 28)  # normalised images: 0 is the mean
    out = cutout(x, 8, torch.Generator().manual_seed(0))
    for image in out:
        rows, cols = (image[0] == 0).nonzero(as_tuple=True)
        assert len(rows), "every image gets a square"
        height, width = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
        assert height <= 8 and width <= 8 and len(rows) == height * width  # one rectangle, cut by the border
        assert torch.equal(image[:, rows, cols], torch.zeros(3, len(rows)))  # every channel
        assert int((image == 1).sum()) == 3 * (28 * 28 - len(rows))  # nothing else touched
    sizes = [(img[0] == 0).sum().item() for img in out]
    assert 64 in sizes and min(sizes) < 64  # whole squares inside, cut ones at the border


def test_mixup_blends_each_image_with_its_partner_and_repeats_from_the_seed():
    x, labels = torch.rand(32, 1, 8, 8), torch.arange(32)  # distinct labels name each image's partner
    mixed, partner, lam = mix_batch(x, labels, 0.4, torch.Generator().manual_seed(3))
    assert 0.0 <= lam <= 1.0 and sorted(partner.tolist()) == list(range(32)) and not torch.equal(partner, labels)
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[partner])
    again = mix_batch(x, labels, 0.4, torch.Generator().manual_seed(3))
    assert torch.equal(again[0], mixed) and torch.equal(again[1], partner) and again[2] == lam


def test_the_weight_average_warms_up_then_follows_the_decay():
    model = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.9)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight += 1.0
    model.train()(torch.randn(8, 4))  # moves the BatchNorm statistics and its batch counter
    average.update()
    decay = min(0.9, 2 / 11)  # the first update: (1 + 1) / (10 + 1)
    assert torch.allclose(average.module[0].weight, start + (1 - decay))
    assert average.module[1].num_batches_tracked == model[1].num_batches_tracked == 1  # integers are copied
    for _ in range(200):
        average.update()
    assert torch.allclose(average.module[0].weight, model[0].weight, atol=1e-6)  # converged on a fixed model
    restored = WeightAverage(model, decay=0.9)
    restored.load_state_dict(average.state_dict())
    assert restored.updates == 201 and torch.equal(restored.module[0].weight, average.module[0].weight)


def test_with_ema_best_pt_holds_the_average_that_was_validated(tiny_config, mnist_small):
    result = fit_run(with_train(tiny_config, ema_decay=0.99), mnist_small)
    best, last = load_checkpoint(result.best_path), load_checkpoint(result.last_path)
    averaged = last["weight_average"]["weights"]
    assert all(torch.equal(best["state_dict"][k], averaged[k]) for k in averaged)
    assert not torch.equal(best["state_dict"]["fc1.weight"], last["state_dict"]["fc1.weight"])  # last.pt: trained


def test_precision_auto_follows_cpu_flags(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2"}))
    assert runtime.resolve_runtime("cpu", "auto").bf16 is False
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    rt = runtime.resolve_runtime("cpu", "auto")
    assert rt.bf16 and rt.channels_last
    assert runtime.resolve_runtime("cpu", "fp32").bf16 is False


def test_cuda_request_without_gpu_is_clear():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="no CUDA device"):
        runtime.resolve_runtime("cuda", "auto")


def test_project_root_from_dvc_temp_workspace(tmp_path):
    inner = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc"
    inner.mkdir(parents=True)
    assert runtime.project_root(inner) == tmp_path / "repo"


def test_hard_batch_mining_refeeds_the_hardest_batches(tiny_config, mnist_small):
    from cnnlab.config import HardBatchMiningConfig

    config = with_train(tiny_config, epochs=2, scheduler="onecycle",
                        hard_batch_mining=HardBatchMiningConfig(start_epoch=2, fraction=0.25))
    result = fit_run(config, mnist_small)
    assert [h["hard_batches_refed"] for h in result.history] == [0, 6]  # 25% of 24 batches
    assert len(result.batch_losses) == 24 + 24 + 6


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "rmsprop"])
@pytest.mark.parametrize("scheduler", ["step", "exponential", "cosine", "onecycle"])
def test_every_optimizer_and_scheduler_combination_builds_and_steps(optimizer, scheduler):
    from cnnlab.config import TrainConfig
    from cnnlab.train import make_scheduler

    cfg = TrainConfig(optimizer=optimizer, scheduler=scheduler, lr=0.1, epochs=4, step_size=1, gamma=0.5)
    model = create_model("svhn_base")
    opt = make_optimizer(model, cfg)
    sched, per_batch = make_scheduler(opt, cfg, steps_per_epoch=3)
    lrs = []
    for _ in range(3 if per_batch else 2):
        model(torch.rand(2, 3, 32, 32))[0].sum().backward()
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert per_batch == (scheduler == "onecycle")
    assert lrs[0] != 0.1 or scheduler == "onecycle"  # the schedule moved the learning rate
    assert len(set(lrs)) > 1
