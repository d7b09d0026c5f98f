"""Serving a trained model: `mlflow models serve` of the registry's champion over HTTP, and
`cnnlab predict` on image files and an .npz with the exported ONNX model alone (no torch)."""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from cnnlab.checkpoint import inference_model, load_checkpoint
from cnnlab.cli import main
from cnnlab.contract import RunFiles
from cnnlab.data.folders import load_image
from cnnlab.images import FOLDER_RESIZE
from cnnlab.modelcard import METADATA_KEY, ModelCard
from cnnlab.stages.evaluate import evaluate
from cnnlab.stages.export import export
from cnnlab.stages.predict import predict, read_image
from cnnlab.stages.register import register
from cnnlab.stages.train import train

from .conftest import tiny_config_at

VENV_BIN = os.path.dirname(sys.executable)  # mlflow, as `make install` put it beside this python
POSTED = 200  # real test images sent over HTTP (about 1.5 MB of JSON)
SPLIT_SIZES = {"train": 1000, "val": 500, "test": 1000}  # real digits; one epoch reaches about 75% test accuracy
SERVER_START_S = 180  # a cold start on a busy 2-core machine imports torch and mlflow first


@pytest.fixture(scope="module")
def champion(tmp_path_factory, mnist_small, tracking_uri):
    """A tiny E1 run through train (model logged), evaluate, export and register: the registry's
    champion of a name of its own, and its exported model.onnx."""
    root = tmp_path_factory.mktemp("served")
    name = f"serve-{uuid.uuid4().hex[:8]}"
    data = dataclasses.replace(mnist_small, **{f"{xy}_{split}": getattr(mnist_small, f"{xy}_{split}")[:count]
                                               for split, count in SPLIT_SIZES.items() for xy in "xy"})
    config = tiny_config_at(root, data, tracking_uri)
    config = dataclasses.replace(config, tracking=dataclasses.replace(config.tracking, log_model=True,
                                                                      registered_model=name))
    train(config)
    evaluate(config)
    export(config)
    record = register(config)
    assert record["alias"] == "champion" and record["alias_moved"]
    files = RunFiles.of(config)
    return {"name": name, "files": files, "payload": load_checkpoint(files.best), "config": config}


def torch_probabilities(payload, images: torch.Tensor) -> np.ndarray:
    """What the checkpoint itself says: softmax of the exported module's logits, uint8 NCHW in."""
    with torch.no_grad():
        return torch.softmax(inference_model(payload)(images.float() / 255.0).double(), 1).numpy()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_ping(server: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {server.returncode}: {server.stdout.read()}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            time.sleep(0.5)
    raise AssertionError(f"mlflow models serve did not answer {url}/ping within {SERVER_START_S}s")


def predicted_classes(scores) -> np.ndarray:
    """The pyfunc output (N x classes scores: logits or probabilities) as class indices."""
    scores = np.asarray(scores, dtype=np.float64)
    assert scores.ndim == 2, scores.shape
    return scores.argmax(1)


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_champions_predictions(champion, mnist_small, tracking_uri):
    import mlflow.pyfunc

    model_uri = f"models:/{champion['name']}@champion"
    # The pyfunc interface: float32 pixels in [0, 1], N x C x H x W, as the model's signature says.
    images = (mnist_small.x_test[:POSTED].float() / 255.0).numpy()
    labels = mnist_small.y_test[:POSTED].numpy()
    mlflow.set_registry_uri(tracking_uri)
    expected = predicted_classes(mlflow.pyfunc.load_model(model_uri).predict(images))

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    server = subprocess.Popen([shutil.which("mlflow", path=env["PATH"]), "models", "serve", "-m", model_uri,
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_ping(server, url)
        request = urllib.request.Request(url + "/invocations", json.dumps({"inputs": images.tolist()}).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as answer:
            served = predicted_classes(json.loads(answer.read())["predictions"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # uvicorn and its worker
        server.wait(timeout=30)

    assert (served == expected).all()
    checkpoint = torch_probabilities(champion["payload"], mnist_small.x_test[:POSTED]).argmax(1)
    assert (served == checkpoint).all()
    assert (served == labels).mean() == (expected == labels).mean() > 0.6


@pytest.fixture(scope="module")
def test_pngs(champion, mnist_small, tmp_path_factory):
    """The first real test digits as 8-bit grayscale PNG files, and the same digits as one .npz."""
    folder = tmp_path_factory.mktemp("digits")
    images = mnist_small.x_test[:64]
    paths = []
    for i, image in enumerate(images):
        paths.append(folder / f"digit_{i:02d}.png")
        Image.fromarray(image[0].numpy(), mode="L").save(paths[-1])
    np.savez(folder / "digits.npz", images=images[:, 0].numpy())  # N x H x W: one channel
    return {"paths": paths, "npz": folder / "digits.npz", "images": images, "labels": mnist_small.y_test[:64]}


def test_export_writes_the_model_card_into_the_onnx_file(champion):
    payload = champion["payload"]
    metadata = {p.key: p.value for p in onnx.load(str(champion["files"].onnx)).metadata_props}
    card = ModelCard.from_metadata(metadata, champion["files"].onnx)
    assert card.classes == payload["classes"] and card.input_shape == [1, 28, 28] == payload["input_shape"]
    assert card.normalization == payload["normalization"] and card.resize == "none" and card.dataset == "mnist"


def test_predict_matches_the_checkpoint_on_real_images_and_npz(champion, test_pngs):
    onnx_path = champion["files"].onnx
    from_files = predict(onnx_path, [str(test_pngs["paths"][0].parent / "digit_*.png")])
    from_npz = predict(onnx_path, [str(test_pngs["npz"])])
    classes = champion["payload"]["classes"]
    expected = torch_probabilities(champion["payload"], test_pngs["images"])
    tolerance = champion["config"].export.max_abs_diff  # the export's own parity limit
    for result in (from_files, from_npz):
        assert result["classes"] == classes and len(result["predictions"]) == 64
        probabilities = np.array([[p["probabilities"][c] for c in classes] for p in result["predictions"]])
        assert np.abs(probabilities - expected).max() <= tolerance
        assert [p["class"] for p in result["predictions"]] == [classes[i] for i in expected.argmax(1)]
    assert [p["input"] for p in from_files["predictions"]] == [str(p) for p in test_pngs["paths"]]
    assert from_npz["predictions"][3]["input"] == f"{test_pngs['npz']}[3]"
    accuracy = np.mean([p["class"] == classes[y] for p, y in zip(from_files["predictions"], test_pngs["labels"])])
    assert accuracy == (expected.argmax(1) == test_pngs["labels"].numpy()).mean() > 0.6


def test_predict_cli_prints_json_without_importing_torch(champion, test_pngs):
    probe = ("import sys; from cnnlab.cli import main; code = main(sys.argv[1:]); "
             "print('torch' in sys.modules, 'mlflow' in sys.modules, file=sys.stderr); sys.exit(code)")
    done = subprocess.run([sys.executable, "-c", probe, "predict", str(champion["files"].onnx),
                           str(test_pngs["paths"][0]), str(test_pngs["npz"])],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.split() == ["False", "False"]  # neither torch nor mlflow was imported
    printed = json.loads(done.stdout)
    assert len(printed["predictions"]) == 65 and set(printed["predictions"][0]) == {"input", "class", "probabilities"}


def test_predict_refuses_wrong_size_channels_corrupt_files_and_models(champion, test_pngs, tmp_path, capsys):
    onnx_path = str(champion["files"].onnx)
    digit = test_pngs["images"][0, 0].numpy()
    Image.fromarray(np.pad(digit, 2), mode="L").save(tmp_path / "big.png")
    Image.fromarray(np.stack([digit] * 3, -1), mode="RGB").save(tmp_path / "rgb.png")
    (tmp_path / "broken.png").write_bytes(test_pngs["paths"][0].read_bytes()[:40])
    np.savez(tmp_path / "other_key.npz", x=test_pngs["images"][:2, 0].numpy())
    np.savez(tmp_path / "padded.npz", images=np.pad(test_pngs["images"][:2, 0].numpy(), ((0, 0), (2, 2), (2, 2))))
    np.savez(tmp_path / "scaled.npz", images=test_pngs["images"][:2].numpy() / 255.0)
    with (tmp_path / "bare.npz").open("wb") as bare:  # an .npy array under an .npz name
        np.save(bare, test_pngs["images"][:2].numpy())
    no_card = onnx.load(onnx_path)
    del no_card.metadata_props[:]
    onnx.save(no_card, str(tmp_path / "old.onnx"))
    cases = [
        ([onnx_path, str(tmp_path / "big.png")], ["big.png is 32x32 grayscale (1 channel)", "expects 28x28", "resize"]),
        ([onnx_path, str(tmp_path / "rgb.png")], ["rgb.png is 28x28 RGB (3 channels)", "expects 28x28 grayscale",
                                                   "--convert-channels"]),
        ([onnx_path, str(tmp_path / "broken.png")], ["cannot decode image", "broken.png"]),
        ([onnx_path, str(tmp_path / "*.jpg")], ["no file matches"]),
        ([onnx_path, str(tmp_path / "other_key.npz")], ["other_key.npz has no array 'images'", "--npz-key"]),
        ([onnx_path, str(tmp_path / "bare.npz")], ["bare.npz is not a readable .npz file", "bare .npy array"]),
        ([onnx_path, str(tmp_path / "padded.npz")], ["has shape (2, 32, 32)", "N x 1 x 28 x 28"]),
        ([onnx_path, str(tmp_path / "scaled.npz")], ["holds float64 values", "0..255"]),
        ([str(tmp_path / "missing.onnx"), str(tmp_path / "rgb.png")], ["missing.onnx not found", "cnnlab export"]),
        ([str(tmp_path / "broken.png"), str(tmp_path / "rgb.png")], ["broken.png is not a readable ONNX model"]),
        ([str(tmp_path / "old.onnx"), str(tmp_path / "rgb.png")], [f"has no {METADATA_KEY}", "cnnlab export"]),
    ]
    for argv, phrases in cases:
        assert main(["predict", *argv]) == 2
        err = capsys.readouterr().err
        assert all(phrase in err for phrase in phrases), (phrases, err)
        assert "Traceback" not in err

    converted = predict(onnx_path, [str(tmp_path / "rgb.png")], convert_channels=True)["predictions"][0]
    original = predict(onnx_path, [str(test_pngs["paths"][0])])["predictions"][0]
    assert converted["probabilities"] == original["probabilities"]  # PIL's luma of equal R, G, B is the grey


def test_predict_fits_photos_as_the_image_folder_reader_did(tmp_path):
    """A model trained on image folders: predict resizes and crops exactly as training's reader."""
    photo = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)).save(photo)
    card = ModelCard(["alien", "predator"], [3, 64, 64], {"mean": [0.5] * 3, "std": [0.25] * 3}, FOLDER_RESIZE,
                     "alien_vs_predator")
    assert np.array_equal(read_image(photo, card), load_image(photo, 64).transpose(2, 0, 1))
