"""Dataset loaders on the real shared files, plus small files the tests build."""

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.cli import main
from cnnlab.data import DatasetError, SourceContext, load_raw, prepare, summarize
from cnnlab.data.digits import read_idx
from cnnlab.data.prepare import load_prepared, save_prepared

from ..conftest import PROJECT_ROOT


def context(datasets_dir=None, raw_dir=Path("/nonexistent"), **kw):
    kw.setdefault("download", False)
    kw.setdefault("fallback", "error")
    return SourceContext(raw_dir=Path(raw_dir), datasets_dir=datasets_dir, **kw)


def test_mnist_loads_verified_from_the_datasets_dir(datasets_dir, mnist_raw):
    assert mnist_raw.x_train.shape == (60000, 1, 28, 28) and mnist_raw.x_train.dtype == torch.uint8
    assert mnist_raw.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(mnist_raw.y_test).tolist()[0] == 980  # the official test split
    assert mnist_raw.provenance["verified"].startswith("md5")


def test_mnist_checksum_mismatch_is_a_clear_error(datasets_dir, tmp_path):
    folder = tmp_path / "mnist"
    shutil.copytree(datasets_dir / "mnist", folder)
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one flipped label
    labels.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DatasetError, match="checksum mismatch.*t10k-labels.*delete it"):
        load_raw("mnist", context(tmp_path))


def test_missing_dataset_says_where_it_looked(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_raw("cifar10", context(tmp_path))
    message = str(err.value)
    assert str(tmp_path / "cifar10" / "cifar10.npz") in message
    assert "Fix:" in message and "download disabled" in message


def test_unknown_dataset_lists_registered_names(tmp_path):
    registered = "alien_vs_predator, caltech101, cifar10, fashion_mnist, mnist, mnist_digits, svhn"
    with pytest.raises(DatasetError, match=f"registered: {registered}"):
        load_raw("imagenet", context(tmp_path))


def test_embedded_fallback_is_real_labelled_mnist():
    raw = load_raw("mnist", context(fallback="embedded"))  # no datasets directory set
    assert raw.provenance["embedded"] is True
    assert len(raw.y_train) + len(raw.y_test) == 5000
    assert torch.bincount(raw.y_train).tolist() == [400] * 10  # stratified 80/20 of 500 per digit
    assert len(raw.provenance["content_sha256"]) == 64
    assert raw.x_train.float().mean() > 20  # real digits, not blank images


def test_embedded_fallback_can_be_refused():
    with pytest.raises(DatasetError, match="data.fallback=embedded"):
        load_raw("mnist", context(fallback="error"))


def test_a_set_datasets_dir_without_mnist_is_no_reason_for_the_embedded_digits(tmp_path):
    with pytest.raises(DatasetError, match=f"{tmp_path / 'mnist'}/.*data.name=mnist_digits"):
        load_raw("mnist", context(tmp_path, fallback="embedded"))


@pytest.mark.parametrize("name", ["mnist", "cifar10", "folder:pets"])
def test_a_datasets_dir_that_does_not_exist_is_named(tmp_path, name):
    missing = tmp_path / "nonexistent"
    with pytest.raises(DatasetError, match=f"the datasets directory {missing} .*does not exist. Fix: point it"):
        load_raw(name, context(missing, fallback="embedded", download=True))


def test_cli_prepare_with_a_missing_datasets_env_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CNNLAB_DATASETS", str(tmp_path / "nonexistent"))
    assert main(["prepare", "--params", str(PROJECT_ROOT / "params.yaml"), "-S", f"data.raw_dir={tmp_path / 'raw'}",
                 "-S", f"data.prepared_dir={tmp_path / 'prepared'}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"the datasets directory {tmp_path / 'nonexistent'}" in err
    assert "$CNNLAB_DATASETS" in err and "Fix:" in err
    assert not (tmp_path / "prepared").exists()


def test_cifar10_npz_is_verified_and_shaped(datasets_dir):
    raw = load_raw("cifar10", context(datasets_dir))
    assert raw.x_train.shape == (50000, 3, 32, 32)
    assert raw.classes[0] == "airplane" and raw.classes[-1] == "truck"
    assert raw.provenance["verified"] == "sha256"


def _write_npz(path: Path, n_train=40, n_test=20, classes=4):
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, 8, 8, 3), dtype=np.uint8),
             y_train=np.arange(n_train) % classes, x_test=rng.integers(0, 256, (n_test, 8, 8, 3), dtype=np.uint8),
             y_test=np.arange(n_test) % classes)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_user_npz_with_pinned_sha256(tmp_path):
    digest = _write_npz(tmp_path / "mine.npz")
    raw = load_raw("npz:mine", context(tmp_path, sha256=digest))
    assert raw.x_train.shape == (40, 3, 8, 8) and raw.classes == ["0", "1", "2", "3"]
    with pytest.raises(DatasetError, match="checksum mismatch"):
        load_raw("npz:mine", context(tmp_path, sha256="0" * 64))


def test_npz_missing_arrays(tmp_path):
    np.savez(tmp_path / "broken.npz", x_train=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(DatasetError, match="lacks arrays"):
        load_raw("npz:broken", context(tmp_path))


def _save_npz(path: Path, **arrays) -> Path:
    """A valid 2-class greyscale 8×8 npz, with ``arrays`` replacing some of its arrays."""
    valid = {"x_train": np.zeros((4, 8, 8), np.uint8), "y_train": np.array([0, 1, 0, 1]),
             "x_test": np.zeros((2, 8, 8), np.uint8), "y_test": np.array([0, 1])}
    np.savez(path, **{**valid, **arrays})
    return path


BAD_NPZ = {  # what a user can save -> what the error must say besides the file and "Fix:"
    "train 28x28, test 32x32": ({"x_train": np.zeros((4, 28, 28), np.uint8), "x_test": np.zeros((2, 32, 32), np.uint8)},
                                r"train images are C×H×W \(1, 28, 28\) but test images are \(1, 32, 32\)"),
    "RGB train, greyscale test": ({"x_train": np.zeros((4, 8, 8, 3), np.uint8)},
                                  r"train images are C×H×W \(3, 8, 8\) but test images are \(1, 8, 8\)"),
    "four channels": ({"x_train": np.zeros((4, 8, 8, 4), np.uint8)}, "x_train images have 8 channels"),
    "fewer labels than images": ({"y_train": np.array([0, 1, 0])}, r"4 train images \(x_train\) but 3 labels"),
    "pixels above 255": ({"x_train": np.full((4, 8, 8), 300.0)},
                         "x_train pixel values span 300.0..300.0, outside 0..255"),
    "NaN pixels": ({"x_test": np.full((2, 8, 8), np.nan)}, "x_test holds NaN or infinite pixel values"),
    "pixels scaled to 0..1": ({"x_train": np.full((4, 8, 8), 0.5)}, "x_train holds fractional pixel values"),
    "fractional labels": ({"y_train": np.array([0.0, 1.5, 0.0, 1.0])},
                          r"y_train holds 1 labels that are not whole numbers \(e.g. \[1.5\]\)"),
    "NaN labels": ({"y_test": np.array([0.0, np.nan])}, "y_test holds 1 labels that are not whole numbers"),
    "label beyond the classes": ({"y_train": np.array([0, 1, 2, 1]), "classes": np.array(["a", "b"])},
                                 r"y_train labels span 0..2, outside 0..1 for the 2 classes"),
    "negative label": ({"y_test": np.array([-1, 1])}, r"y_test labels span -1..1, outside 0..1"),
}


@pytest.mark.parametrize("case", BAD_NPZ)
def test_bad_npz_is_refused_at_load_naming_the_file_and_fix(tmp_path, case):
    arrays, expected = BAD_NPZ[case]
    path = _save_npz(tmp_path / "mine.npz", **arrays)
    with pytest.raises(DatasetError, match=expected) as err:
        load_raw("npz:mine", context(tmp_path))
    assert str(path) in str(err.value) and "Fix:" in str(err.value)


def test_whole_number_floats_are_accepted_as_pixels_and_labels(tmp_path):
    _save_npz(tmp_path / "mine.npz", x_train=np.full((4, 8, 8), 255.0), y_train=np.array([0.0, 1.0, 0.0, 1.0]),
              y_test=np.array([[0], [1]]))
    raw = load_raw("npz:mine", context(tmp_path))
    assert raw.x_train.dtype == torch.uint8 and int(raw.x_train.max()) == 255
    assert raw.y_train.tolist() == [0, 1, 0, 1] and raw.y_test.tolist() == [0, 1]


def test_cli_prepare_refuses_npz_splits_of_different_sizes(tmp_path, capsys):
    path = _save_npz(tmp_path / "mixed.npz", x_train=np.zeros((4, 28, 28), np.uint8),
                     x_test=np.zeros((2, 32, 32), np.uint8))
    assert main(["prepare", "--params", str(PROJECT_ROOT / "params.yaml"), "-S", "data.name=npz:mixed",
                 "-S", f"data.datasets_dir={tmp_path}", "-S", f"data.prepared_dir={tmp_path / 'prepared'}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"cnnlab prepare: error: {path}: train images are C×H×W (1, 28, 28)" in err
    assert "Fix: give both splits one image size" in err
    assert not (tmp_path / "prepared").exists()


def _write_images(folder: Path, count: int) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(folder / f"{i}.png")


@pytest.mark.parametrize("extra_split, expected", [
    ("validation", r"\['dog'\] only in .*pets/validation \(never trained on\)"),
    ("train", r"\['dog'\] only in .*pets/train \(never tested\)"),
])
def test_a_class_in_only_one_split_is_named(tmp_path, extra_split, expected):
    for split in ("train", "validation"):
        _write_images(tmp_path / "pets" / split / "cat", 2)
    _write_images(tmp_path / "pets" / extra_split / "dog", 2)
    with pytest.raises(DatasetError, match=expected) as err:
        load_raw("folder:pets", context(tmp_path, image_size=8))
    assert "Fix: give every class a folder with images under both" in str(err.value)


def test_hidden_and_matching_class_folders(tmp_path):
    for split in ("train", "validation"):
        for name in ("cat", "dog"):
            _write_images(tmp_path / "pets" / split / name, 2)
    (tmp_path / "pets" / "train" / ".ipynb_checkpoints").mkdir()
    raw = load_raw("folder:pets", context(tmp_path, image_size=8))
    assert raw.classes == ["cat", "dog"] and raw.x_test.shape == (4, 3, 8, 8)


def test_svhn_reads_mat_files_with_label_10_as_zero(tmp_path):
    from scipy.io import savemat

    folder = tmp_path / "svhn"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train_32x32.mat", 30), ("test_32x32.mat", 10)):
        labels = (np.arange(n) % 10 + 1).reshape(-1, 1)  # SVHN labels are 1..10
        savemat(folder / name, {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8), "y": labels})
    sums = "".join(f"{hashlib.sha256((folder / f).read_bytes()).hexdigest()}  svhn/{f}\n"
                   for f in ("train_32x32.mat", "test_32x32.mat"))
    (tmp_path / "SHA256SUMS").write_text(sums)
    raw = load_raw("svhn", context(tmp_path))
    assert raw.x_train.shape == (30, 3, 32, 32)
    assert raw.y_train[:10].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    (folder / "test_32x32.mat").write_bytes(b"corrupt")
    with pytest.raises(DatasetError, match="checksum mismatch"):
        load_raw("svhn", context(tmp_path))


def test_alien_vs_predator_image_folders(datasets_dir):
    raw = load_raw("alien_vs_predator", context(datasets_dir, image_size=32))
    assert raw.classes == ["alien", "predator"]
    assert raw.x_train.shape == (694, 3, 32, 32) and raw.x_test.shape == (200, 3, 32, 32)
    assert torch.bincount(raw.y_test).tolist() == [100, 100]


def test_undecodable_image_is_named(tmp_path):
    for split in ("train", "validation"):
        (tmp_path / "pets" / split / "cat").mkdir(parents=True)
    (tmp_path / "pets" / "train" / "cat" / "bad.jpg").write_bytes(b"not an image")
    _write_images(tmp_path / "pets" / "validation" / "cat", 1)
    with pytest.raises(DatasetError, match="cannot decode image .*bad.jpg"):
        load_raw("folder:pets", context(tmp_path))


def test_stratified_split_keeps_class_ratios(mnist_raw):
    data = prepare(mnist_raw, val_fraction=0.1, seed=0)
    full = torch.bincount(mnist_raw.y_train).double() / len(mnist_raw.y_train)
    for split in ("train", "val"):
        _, y = data.split(split)
        ratios = torch.bincount(y, minlength=10).double() / len(y)
        assert torch.allclose(ratios, full, atol=max(2e-3, 1.5 / len(y)))  # one image of rounding
    assert len(data.y_val) == round(0.1 * len(mnist_raw.y_train))  # 6,000 of MNIST's 60,000
    assert len(data.y_val) + len(data.y_train) == len(mnist_raw.y_train)


def test_split_is_deterministic_and_subset_is_stratified(mnist_raw):
    a = prepare(mnist_raw, 0.1, seed=0, train_subset=1000)
    b = prepare(mnist_raw, 0.1, seed=0, train_subset=1000)
    assert torch.equal(a.y_train, b.y_train) and torch.equal(a.x_val, b.x_val)
    assert torch.bincount(a.y_train).min() >= 80  # ~100 per digit
    with pytest.raises(DatasetError, match="val_fraction"):
        prepare(mnist_raw, 1.5, seed=0)


def test_prepared_artifact_round_trip_and_summary(mnist_small, tmp_path):
    path = save_prepared(mnist_small, tmp_path / "mnist.pt")
    loaded = load_prepared(path)
    assert torch.equal(loaded.x_test, mnist_small.x_test)
    summary = summarize(loaded)
    assert (summary["height"], summary["width"], summary["channels"]) == (28, 28, 1)
    assert sum(summary["per_class"]["test"].values()) == len(mnist_small.y_test)
    assert 0.12 < summary["mean"][0] < 0.14  # MNIST's well-known pixel mean 0.1307
    path.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="cnnlab prepare"):
        load_prepared(path)


def test_a_changed_pixel_of_a_prepared_file_is_found_and_an_older_file_loads(mnist_small, tmp_path):
    path = save_prepared(mnist_small, tmp_path / "mnist.pt")
    payload = torch.load(path, weights_only=True)
    payload["x_test"] = payload["x_test"].clone()
    payload["x_test"][0, 0, 0, 0] ^= 1  # still unpickles: only the stored hash tells
    torch.save(payload, path)
    with pytest.raises(DatasetError, match="no longer matches the payload_sha256"):
        load_prepared(path)
    del payload["payload_sha256"]  # as prepared before files stored a hash
    torch.save(payload, path)
    assert load_prepared(path).x_test[0, 0, 0, 0] == mnist_small.x_test[0, 0, 0, 0] ^ 1


def test_read_idx_rejects_bad_magic():
    with pytest.raises(DatasetError, match="magic"):
        read_idx(b"\x01\x02\x03\x04")
