"""The named torchvision pipelines: contract (shape, dtype, p, reproducibility) on real CIFAR-10
images, and what each pipeline's name promises on synthetic images built to make it checkable."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

from cnnlab.augment import PIPELINE_DEFINITIONS, PIPELINES, BatchPipeline, build_pipeline

NAMED = [name for name in PIPELINES if name != "none"]


def read_leading_images(npz_path, key: str, count: int) -> np.ndarray:
    """The first `count` rows of one array in an .npz, streamed so the 150 MB archive is not inflated."""
    with zipfile.ZipFile(npz_path) as archive, archive.open(f"{key}.npy") as stream:
        version = np.lib.format.read_magic(stream)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(stream)
        assert not fortran_order and dtype == np.uint8
        row_shape = shape[1:]
        data = stream.read(count * int(np.prod(row_shape)))
    return np.frombuffer(data, dtype=np.uint8).reshape(count, *row_shape)


@pytest.fixture(scope="module")
def cifar_batch(datasets_dir) -> torch.Tensor:
    """200 real CIFAR-10 training images as a uint8 (N, 3, 32, 32) batch."""
    images = read_leading_images(datasets_dir / "cifar10" / "cifar10.npz", "x_train", 200)
    return torch.from_numpy(images.copy()).permute(0, 3, 1, 2).contiguous()


def changed_images(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    return (before != after).flatten(1).any(1)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def horizontal_ramps(count: int, size: int = 32) -> torch.Tensor:
    """Images dark on the left, bright on the right, with a different slope per channel so
    they are coloured; rows are identical."""
    columns = torch.linspace(0, 1, size)
    channels = torch.stack([40 + 200 * columns, 20 + 160 * columns, 60 + 120 * columns])  # 3, W
    image = channels[:, None, :].expand(3, size, size)
    return image.round().to(torch.uint8).expand(count, 3, size, size).contiguous()


# --- the contract, on real images -------------------------------------------------------------

@pytest.mark.parametrize("name", NAMED)
def test_keeps_shape_dtype_device_and_leaves_the_input_alone(cifar_batch, name):
    batch = cifar_batch[:64]
    original = batch.clone()
    out = build_pipeline(name, p=1.0)(batch, seeded(0))
    assert out.shape == batch.shape and out.dtype == torch.uint8 and out.device == batch.device
    assert torch.equal(batch, original)


@pytest.mark.parametrize("name", NAMED)
def test_probability_decides_how_many_images_change(cifar_batch, name):
    assert torch.equal(build_pipeline(name, p=0.0)(cifar_batch, seeded(1)), cifar_batch)
    everything = changed_images(cifar_batch, build_pipeline(name, p=1.0)(cifar_batch, seeded(1)))
    assert everything.float().mean() >= 0.98
    half = changed_images(cifar_batch, build_pipeline(name, p=0.5)(cifar_batch, seeded(1)))
    assert 0.35 <= half.float().mean() <= 0.65


@pytest.mark.parametrize("name", NAMED)
def test_same_generator_seed_same_output_and_other_seeds_differ(cifar_batch, name):
    pipeline = build_pipeline(name, p=0.5)
    batch = cifar_batch[:32]
    torch.manual_seed(0)
    first = pipeline(batch, seeded(7))
    torch.manual_seed(1)  # whatever else drew from the global RNG in between does not matter
    again = pipeline(batch, seeded(7))
    assert torch.equal(first, again)
    assert not torch.equal(first, pipeline(batch, seeded(8)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMED)
def test_cuda_batches_stay_on_the_gpu_and_match_across_runs(name):
    batch = horizontal_ramps(8).cuda()
    pipeline = build_pipeline(name, p=1.0)
    out = pipeline(batch, seeded(0))  # a CPU generator, as the trainer passes
    assert out.device == batch.device and out.dtype == torch.uint8 and out.shape == batch.shape
    assert changed_images(batch, out).all() and torch.equal(out, pipeline(batch, seeded(0)))


def test_consecutive_calls_get_fresh_randomness_and_leave_the_global_rng_alone(cifar_batch):
    pipeline, generator = build_pipeline("crop_rotate", p=1.0), seeded(3)
    global_state = torch.get_rng_state()
    first, second = pipeline(cifar_batch[:16], generator), pipeline(cifar_batch[:16], generator)
    assert not torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), global_state)


def test_each_image_draws_its_own_parameters():
    # v2 on a whole batch would give every copy the same crop and angle; per image they differ.
    identical = horizontal_ramps(8)
    out = build_pipeline("crop_rotate", p=1.0)(identical, seeded(0))
    assert len({bytes(image.numpy()) for image in out}) == 8


# --- what each name promises, on images built to show it -----------------------------------

def test_cs_hf_mirrors_and_its_flip_alone_is_an_exact_mirror():
    ramps = horizontal_ramps(16)
    flipped_only = BatchPipeline("cs_hf", p=1.0, ops={"horizontal_flip": {}})(ramps, seeded(0))
    assert torch.equal(flipped_only, ramps.flip(-1))
    # The full pipeline: contrast/saturation factors stay in [0.6, 1.4] (> 0), so left-to-right
    # order survives the jitter and the flip turns dark-left into bright-left, colours changed.
    out = build_pipeline("cs_hf", p=1.0)(ramps, seeded(0)).float()
    assert (out[..., :16].mean((1, 2, 3)) > out[..., 16:].mean((1, 2, 3))).all()
    assert changed_images(ramps.flip(-1), out.to(torch.uint8)).all()


def test_h_rp_hue_jitter_keeps_each_pixels_brightest_and_darkest_channel():
    # A hue shift rotates colour around the wheel: HSV's value (max) and saturation (hence min)
    # stay put, so only the channel holding them moves.
    ramps = horizontal_ramps(16)
    out = BatchPipeline("h_rp", p=1.0, ops={"color_jitter": {"hue": 0.1}})(ramps, seeded(0))
    assert changed_images(ramps, out).float().mean() >= 0.9
    for reduce in (torch.amax, torch.amin):
        assert (reduce(out.int(), 1) - reduce(ramps.int(), 1)).abs().max() <= 2


def test_h_rp_perspective_warps_the_frame_and_fills_outside_it_with_black():
    flat = torch.full((32, 3, 32, 32), 200, dtype=torch.uint8)  # hue leaves grey unchanged
    out = build_pipeline("h_rp", p=1.0)(flat, seeded(0))
    has_black_fill = (out == 0).flatten(1).any(1)
    assert has_black_fill.float().mean() >= 0.9
    assert (out[:, :, 12:20, 12:20] == 200).all()  # the centre stays inside the warped image


def test_b_gs_r_gives_grey_images_and_its_rotation_blackens_corners():
    ramps = horizontal_ramps(16)
    out = build_pipeline("b_gs_r", p=1.0)(ramps, seeded(0))
    assert (out[:, 0] == out[:, 1]).all() and (out[:, 1] == out[:, 2]).all()
    assert changed_images(ramps, out).all()
    turned = BatchPipeline("b_gs_r", p=1.0, ops={"rotation": {"degrees": (15, 15)}})
    rotated = turned(torch.full((4, 3, 32, 32), 255, dtype=torch.uint8), seeded(0))
    assert (rotated[:, :, 0, 0] == 0).all() and (rotated[:, :, 16, 16] == 255).all()


def test_crop_rotate_zooms_in_without_mirroring():
    ramps = horizontal_ramps(32)
    out = BatchPipeline("crop_rotate", p=1.0, ops={"resized_crop": PIPELINE_DEFINITIONS["crop_rotate"]["resized_crop"]})
    cropped = out(ramps, seeded(0)).int()
    # Still dark-left/bright-right, never brighter or darker than the source, and usually a
    # narrower slice of it (the crop keeps 70-100% of the area).
    assert (cropped[..., -1] >= cropped[..., 0]).all()
    assert cropped.min() >= ramps.min() and cropped.max() <= ramps.max()
    span = (cropped[:, 0, 16, -1] - cropped[:, 0, 16, 0]).float()
    full_span = float(ramps[0, 0, 16, -1]) - float(ramps[0, 0, 16, 0])
    assert (span < full_span - 2).float().mean() >= 0.8


# --- channels, names, arguments ------------------------------------------------------------

@pytest.mark.parametrize("name", ["cs_hf", "h_rp", "b_gs_r"])
def test_colour_pipelines_refuse_single_channel_images_by_name(name):
    with pytest.raises(ValueError, match=rf"'{name}'.*3-channel RGB"):
        build_pipeline(name, p=1.0)(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), seeded(0))


def test_crop_rotate_works_on_single_channel_images():
    digits = torch.zeros(8, 1, 28, 28, dtype=torch.uint8)
    digits[:, :, 8:20, 12:16] = 255
    out = build_pipeline("crop_rotate", p=1.0)(digits, seeded(0))
    assert out.shape == digits.shape and changed_images(digits, out).all()


def test_names_none_and_unknown():
    assert PIPELINES == ("none", "cs_hf", "h_rp", "b_gs_r", "crop_rotate")
    assert build_pipeline("none") is None
    pipeline = build_pipeline("h_rp", p=0.3)
    assert (pipeline.name, pipeline.p) == ("h_rp", 0.3)
    with pytest.raises(ValueError, match="'hflip'.*none, cs_hf, h_rp, b_gs_r, crop_rotate"):
        build_pipeline("hflip")


def test_rejects_bad_probability_and_non_uint8_batches():
    with pytest.raises(ValueError, match="p must be in"):
        build_pipeline("cs_hf", p=1.5)
    with pytest.raises(ValueError, match="uint8"):
        build_pipeline("cs_hf")(torch.rand(2, 3, 8, 8))
