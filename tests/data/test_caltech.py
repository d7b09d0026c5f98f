"""Caltech-101 loader on small image trees built here (the real data is not on this machine).

The trees mimic the real set: a BACKGROUND_Google clutter folder, uneven class sizes,
grayscale JPEGs and a few PNG files named .jpg.
"""

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from cnnlab.data import DatasetError, SourceContext, list_datasets, load_raw, prepare
from cnnlab.data.caltech import HELD_OUT_TEST_FRACTION, HELD_OUT_SEED, TORCHVISION_FOLDER
from cnnlab.data.folders import load_image

SIZE = 16
CLASS_COUNTS = {"Faces": 9, "accordion": 6, "airplanes": 12, "ant": 20, "yin_yang": 15}  # sorted = label order
BACKGROUND = "BACKGROUND_Google"


def context(datasets_dir=None, raw_dir=Path("/nonexistent"), **kw):
    kw.setdefault("download", False)
    kw.setdefault("fallback", "error")
    kw.setdefault("image_size", SIZE)
    return SourceContext(raw_dir=Path(raw_dir), datasets_dir=datasets_dir, **kw)


def write_image(path: Path, seed: int, grayscale: bool = False, png: bool = False) -> Path:
    """Random noise (so every image is distinct), 40x30 or 30x40, saved under a .jpg name."""
    rng = np.random.default_rng(seed)
    shape = (30, 40) if seed % 2 else (40, 30)
    pixels = rng.integers(0, 256, shape if grayscale else (*shape, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, "L" if grayscale else "RGB").save(path, format="PNG" if png else "JPEG")
    return path


def write_class(folder: Path, count: int, first_seed: int) -> list[Path]:
    # Every 4th image grayscale and every 7th a PNG inside a .jpg, as in the real set.
    return [write_image(folder / f"image_{i + 1:04d}.jpg", first_seed + i, grayscale=i % 4 == 1, png=i % 7 == 3)
            for i in range(count)]


def build_torchvision_tree(root: Path, counts=CLASS_COUNTS) -> dict[str, list[Path]]:
    """``root/caltech101/101_ObjectCategories/<class>/image_NNNN.jpg``, as torchvision leaves it."""
    categories = root / "caltech101" / TORCHVISION_FOLDER
    files = {name: write_class(categories / name, n, 1000 * (k + 1)) for k, (name, n) in enumerate(counts.items())}
    write_class(categories / BACKGROUND, 5, 99000)
    return files


def image_hash(chw: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(chw).tobytes()).hexdigest()


def expected_hashes(files: dict[str, list[Path]]) -> dict[str, str]:
    """hash of each source image as the loader should decode it -> its class."""
    return {image_hash(load_image(p, SIZE).transpose(2, 0, 1)): name for name, paths in files.items() for p in paths}


def loaded(x: torch.Tensor, y: torch.Tensor, classes: list[str]) -> list[tuple[str, str]]:
    return [(image_hash(img.numpy()), classes[label]) for img, label in zip(x, y.tolist())]


@pytest.fixture
def torchvision_tree(tmp_path):
    return tmp_path, build_torchvision_tree(tmp_path)


def test_torchvision_layout_drops_background_and_holds_out_a_stratified_test_split(torchvision_tree):
    root, files = torchvision_tree
    raw = load_raw("caltech101", context(root))
    assert raw.classes == sorted(CLASS_COUNTS) and BACKGROUND not in raw.classes
    assert raw.provenance["dropped_classes"] == [BACKGROUND]
    assert raw.provenance["test_split"]["held_out_fraction"] == HELD_OUT_TEST_FRACTION
    assert raw.provenance["test_split"]["seed"] == HELD_OUT_SEED
    n_train = torch.bincount(raw.y_train, minlength=len(raw.classes)).tolist()
    n_test = torch.bincount(raw.y_test, minlength=len(raw.classes)).tolist()
    for name, train, test in zip(raw.classes, n_train, n_test):
        assert train + test == CLASS_COUNTS[name]
        assert test >= 1 and train >= 1
        assert abs(test - HELD_OUT_TEST_FRACTION * CLASS_COUNTS[name]) <= 1, name
    assert raw.x_train.dtype == torch.uint8 and raw.x_train.shape[1:] == (3, SIZE, SIZE)
    assert raw.x_test.shape[1:] == (3, SIZE, SIZE)


def test_every_image_lands_once_with_its_own_label(torchvision_tree):
    root, files = torchvision_tree
    raw = load_raw("caltech101", context(root))
    expected = expected_hashes(files)
    assert len(expected) == sum(CLASS_COUNTS.values())  # the source images are all distinct
    got = loaded(raw.x_train, raw.y_train, raw.classes) + loaded(raw.x_test, raw.y_test, raw.classes)
    assert Counter(h for h, _ in got) == Counter(expected.keys())  # no image lost, duplicated or from the background
    assert all(expected[h] == label for h, label in got)
    assert not set(h for h, _ in loaded(raw.x_train, raw.y_train, raw.classes)) & set(
        h for h, _ in loaded(raw.x_test, raw.y_test, raw.classes))


def test_grayscale_jpegs_become_three_equal_channels(torchvision_tree):
    root, files = torchvision_tree
    raw = load_raw("caltech101", context(root))
    gray = {image_hash(load_image(p, SIZE).transpose(2, 0, 1)) for paths in files.values() for p in paths[1::4]}
    images = torch.cat([raw.x_train, raw.x_test])
    gray_images = [img for img in images if image_hash(img.numpy()) in gray]
    assert len(gray_images) == len(gray) > 0
    assert all(torch.equal(img[0], img[1]) and torch.equal(img[1], img[2]) for img in gray_images)


def test_held_out_split_is_fixed_and_per_class(tmp_path):
    build_torchvision_tree(tmp_path)
    first = load_raw("caltech101", context(tmp_path))
    again = load_raw("caltech101", context(tmp_path))
    assert torch.equal(first.x_test, again.x_test) and torch.equal(first.y_test, again.y_test)
    # A new class must not reshuffle the others' splits (seeded per class, not by position).
    write_class(tmp_path / "caltech101" / TORCHVISION_FOLDER / "Aardvark", 7, 50000)
    grown = load_raw("caltech101", context(tmp_path))
    assert grown.classes[0] == "Aardvark" and len(grown.classes) == len(CLASS_COUNTS) + 1
    before = sorted(h for h, _ in loaded(first.x_test, first.y_test, first.classes))
    after = sorted(h for h, c in loaded(grown.x_test, grown.y_test, grown.classes) if c != "Aardvark")
    assert before == after


@pytest.mark.parametrize("test_folder", ["test", "validation"])
def test_split_layout_is_used_as_given(tmp_path, test_folder):
    root = tmp_path / "caltech101"
    counts = {"train": {"ant": 4, "Faces": 3}, test_folder: {"ant": 2, "Faces": 1}}
    files = {split: {name: write_class(root / split / name, n, 100 * k + (0 if split == "train" else 50))
                     for k, (name, n) in enumerate(per_class.items())} for split, per_class in counts.items()}
    for split in counts:
        write_class(root / split / BACKGROUND, 2, 7000)
    raw = load_raw("caltech101", context(tmp_path))
    assert raw.classes == ["Faces", "ant"]
    assert raw.provenance["test_split"] == test_folder and raw.provenance["dropped_classes"] == [BACKGROUND]
    assert torch.bincount(raw.y_train).tolist() == [3, 4] and torch.bincount(raw.y_test).tolist() == [1, 2]
    assert sorted(loaded(raw.x_test, raw.y_test, raw.classes)) == sorted(expected_hashes(files[test_folder]).items())
    assert sorted(loaded(raw.x_train, raw.y_train, raw.classes)) == sorted(expected_hashes(files["train"]).items())


def test_split_layout_rejects_test_classes_missing_from_train(tmp_path):
    root = tmp_path / "caltech101"
    write_class(root / "train" / "ant", 2, 0)
    write_class(root / "test" / "ant", 1, 10)
    write_class(root / "test" / "beaver", 1, 20)
    with pytest.raises(DatasetError, match="missing from .*train.*beaver"):
        load_raw("caltech101", context(tmp_path))


def test_stratified_train_val_split_keeps_class_ratios(torchvision_tree):
    root, _ = torchvision_tree
    raw = load_raw("caltech101", context(root))
    data = prepare(raw, val_fraction=0.5, seed=0)  # E7: a 1:1 split of the given train split
    per_class = torch.bincount(raw.y_train, minlength=len(raw.classes))
    train = torch.bincount(data.y_train, minlength=len(raw.classes))
    val = torch.bincount(data.y_val, minlength=len(raw.classes))
    assert torch.equal(train + val, per_class)
    assert (train - val).abs().max() <= 1
    assert torch.equal(data.y_test, raw.y_test)


def test_raw_dir_is_searched_before_the_datasets_dir(tmp_path):
    build_torchvision_tree(tmp_path / "shared", {"ant": 3, "bee": 3})
    write_class(tmp_path / "raw" / "caltech101" / "train" / "cat", 2, 0)
    write_class(tmp_path / "raw" / "caltech101" / "test" / "cat", 1, 5)
    raw = load_raw("caltech101", context(tmp_path / "shared", raw_dir=tmp_path / "raw"))
    assert raw.classes == ["cat"] and raw.provenance["source"] == str(tmp_path / "raw" / "caltech101")


def test_missing_data_names_places_searched_and_both_layouts(tmp_path):
    (tmp_path / "shared").mkdir()  # a datasets directory that does not exist is an error of its own
    ctx = context(tmp_path / "shared", raw_dir=tmp_path / "raw")
    with pytest.raises(DatasetError) as err:
        load_raw("caltech101", ctx)
    message = str(err.value)
    for root in ("raw", "shared"):
        assert str(tmp_path / root / "caltech101" / "train") in message
        assert str(tmp_path / root / "caltech101" / TORCHVISION_FOLDER) in message
    assert "caltech101/train/<class>/*.jpg" in message and f"caltech101/{TORCHVISION_FOLDER}/<class>" in message
    assert "download disabled" in message


def test_download_goes_through_torchvision_then_reads_its_layout(tmp_path, monkeypatch):
    calls = []

    class FakeCaltech101:  # stands in for the network: leaves the tree torchvision would
        def __init__(self, root, target_type, download):
            calls.append((root, target_type, download))
            build_torchvision_tree(Path(root), {"ant": 5, "bee": 4})

    monkeypatch.setattr(torchvision.datasets, "Caltech101", FakeCaltech101)
    raw = load_raw("caltech101", context(None, raw_dir=tmp_path / "raw", download=True))
    assert calls == [(str(tmp_path / "raw"), "category", True)]
    assert raw.classes == ["ant", "bee"] and len(raw.y_train) + len(raw.y_test) == 9


def test_failed_download_is_reported_with_the_hint(tmp_path, monkeypatch):
    def offline(**kwargs):
        raise RuntimeError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "Caltech101", offline)
    with pytest.raises(DatasetError, match=r"(?s)Name or service not known.*download failed.*101_ObjectCategories"):
        load_raw("caltech101", context(None, raw_dir=tmp_path / "raw", download=True))


def test_corrupt_image_is_named(torchvision_tree):
    root, files = torchvision_tree
    files["ant"][2].write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="cannot decode image .*ant/image_0003.jpg"):
        load_raw("caltech101", context(root))


def test_sha256sums_manifest_is_checked(torchvision_tree):
    root, files = torchvision_tree
    listed = [p for paths in files.values() for p in paths]
    (root / "SHA256SUMS").write_text("".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}\n" for p in listed))
    assert len(load_raw("caltech101", context(root)).classes) == len(CLASS_COUNTS)
    write_image(files["Faces"][1], seed=123)  # a valid image, but not the published one
    with pytest.raises(DatasetError, match="checksum mismatch for .*Faces/image_0002.jpg"):
        load_raw("caltech101", context(root))


def test_registered():
    assert "caltech101" in list_datasets()
