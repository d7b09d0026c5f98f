"""Checkpoint integrity: every load verifies the stored hashes, so corrupt bytes are an error."""

import pytest
import torch

from cnnlab.checkpoint import (CheckpointError, UnverifiedCheckpointWarning, content_sha256, load_checkpoint,
                               model_from_checkpoint, save_checkpoint)
from cnnlab.config import load_config
from cnnlab.models import create_model

from .conftest import PROJECT_ROOT


@pytest.fixture
def payload():
    """What train.fit saves, with real optimizer state (so last.pt's extra tensors are covered)."""
    model = create_model("simple_cnn")
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.rand(2, 1, 28, 28))[0].sum().backward()
    optimizer.step()
    return {"config": load_config(PROJECT_ROOT / "params.yaml", []).to_dict(), "model_name": "simple_cnn",
            "model_kwargs": {}, "state_dict": model.state_dict(), "epoch": 1, "classes": [str(i) for i in range(10)],
            "input_shape": [1, 28, 28], "normalization": {"mean": [0.1307], "std": [0.3081]},
            "optimizer": optimizer.state_dict(), "generator": torch.Generator().manual_seed(0).get_state()}


@pytest.fixture
def saved(tmp_path, payload):
    return save_checkpoint(tmp_path / "best.pt", payload)


def flip(path, offset: int, count: int = 64) -> None:
    raw = bytearray(path.read_bytes())
    for i in range(offset, offset + count):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_intact_checkpoint_loads_with_the_weights_hash(saved, payload):
    loaded = load_checkpoint(saved)
    assert loaded["weights_sha256"] == content_sha256(payload["state_dict"])
    for key, tensor in payload["state_dict"].items():
        assert torch.equal(loaded["state_dict"][key], tensor)
    assert loaded["normalization"] == payload["normalization"] and loaded["epoch"] == 1
    model_from_checkpoint(loaded)  # rebuilds


def offsets(path, payload) -> dict[str, int]:
    """Where 64 corrupt bytes would change what loads: tensor data, both stored hashes, the
    pickle's opcodes and values, and the zip directory that says where each record lies."""
    raw = path.read_bytes()
    stored = load_checkpoint(path)
    state = payload["state_dict"]
    found = {
        "first conv weights": raw.find(state["conv1.weight"].numpy().tobytes()[:256]),
        "middle of fc1 weights": raw.find(state["fc1.weight"].numpy().tobytes()[:256]) + 1_000_000,
        "last bias": raw.find(state["fc2.bias"].numpy().tobytes()),
        "optimizer moments": raw.find(payload["optimizer"]["state"][0]["exp_avg"].numpy().tobytes()[:256]),
        "stored weights hash": raw.find(stored["weights_sha256"].encode()),
        "stored metadata hash": raw.find(stored["metadata_sha256"].encode()),
        "pickle header": raw.find(b"\x80\x02}"),  # PROTO 2, then the payload dict
        "normalization in the pickle": raw.find(b"normalization"),
        "zip central directory": len(raw) - 64,
    }
    assert min(found.values()) >= 0
    return found


def test_flipped_bytes_anywhere_that_matters_are_an_error(saved, payload):
    original = saved.read_bytes()
    for where, offset in offsets(saved, payload).items():
        saved.write_bytes(original)
        flip(saved, offset)
        with pytest.raises(CheckpointError, match="corrupt") as err:
            load_checkpoint(saved)
        assert str(saved) in str(err.value), where


def test_mismatch_names_the_file_both_hashes_and_the_fix(saved, payload):
    stored = load_checkpoint(saved)["weights_sha256"]
    flip(saved, saved.read_bytes().find(payload["state_dict"]["conv1.weight"].numpy().tobytes()[:256]))
    actual = content_sha256(torch.load(saved, weights_only=True)["state_dict"])  # still a valid pickle
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(saved)
    message = str(err.value)
    assert actual != stored and str(saved) in message and stored in message and actual in message
    assert "the file is corrupt; retrain with `cnnlab train`, or restore it with `dvc checkout`" in message


def test_a_rewritten_stored_hash_is_an_error(saved):
    """Corruption that leaves the hash a valid string (one hex digit changed) is caught too."""
    stored = load_checkpoint(saved)["weights_sha256"]
    other = ("0" if stored[0] != "0" else "1") + stored[1:]
    saved.write_bytes(saved.read_bytes().replace(stored.encode(), other.encode()))
    with pytest.raises(CheckpointError, match="weights_sha256"):
        load_checkpoint(saved)


def test_old_checkpoint_without_hashes_loads_with_a_warning(tmp_path, payload):
    path = tmp_path / "old.pt"
    torch.save(payload, path)  # as save_checkpoint wrote before it stored hashes
    with pytest.warns(UnverifiedCheckpointWarning, match="integrity cannot be verified"):
        loaded = load_checkpoint(path)
    assert loaded["weights_sha256"] == content_sha256(payload["state_dict"])


def test_one_hash_missing_is_an_error_not_an_old_checkpoint(tmp_path, payload):
    path = tmp_path / "half.pt"
    torch.save({**payload, "weights_sha256": content_sha256(payload["state_dict"])}, path)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_weights_hash_ignores_memory_layout():
    model = create_model("simple_cnn")
    before = content_sha256(model.state_dict())
    assert content_sha256(model.to(memory_format=torch.channels_last).state_dict()) == before
