"""The MLflow pyfunc model of a training run: MLflow's "models from code" file, not a cnnlab module.

``tracking.RunTracker.log_checkpoint_model`` logs this file with the run's ``best.pt`` as the
artifact ``checkpoint``; MLflow runs the file when the model is loaded, so nothing is pickled:
the checkpoint is a weights-only state dict read with ``torch.load(weights_only=True)``, and the
network is rebuilt from the model name and arguments the checkpoint stores (checkpoint.py).

    model = mlflow.pyfunc.load_model("models:/e1-mnist-simple-cnn@champion")
    model.predict(images)   # float32 (N, C, H, W), pixels in [0, 1] -> float32 (N, classes)

Input: a float32 array N x C x H x W of pixels in [0, 1], the layout and scale the ONNX export
takes (normalisation, and flip TTA where the model was trained with it, are applied inside).
Output: a float32 array N x classes of softmax probabilities, in the checkpoint's class order
(``data_summary.json``/``eval.json`` ``classes``); ``argmax(1)`` is the predicted class index.

Like the rest of the MLflow API it is used through ``tracking.py``; only MLflow imports this file.
"""

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class CheckpointClassifier(PythonModel):
    def load_context(self, context) -> None:
        from cnnlab.checkpoint import inference_model, load_checkpoint

        payload = load_checkpoint(context.artifacts["checkpoint"])  # verifies its sha256 hashes
        self.classes = [str(name) for name in payload["classes"]]
        self.input_shape = tuple(payload["input_shape"])
        self.module = inference_model(payload)

    # np.ndarray: MLflow checks the input against the logged signature (a hint it cannot turn
    # into a schema is skipped, instead of a warning on every load about a missing hint).
    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        import torch

        images = np.asarray(model_input, dtype=np.float32)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(f"expected float32 images of shape (N, {', '.join(map(str, self.input_shape))}) "
                             f"with pixels in [0, 1]; got shape {images.shape}")
        with torch.no_grad():
            return torch.softmax(self.module(torch.from_numpy(images)).float(), dim=1).numpy()


mlflow.models.set_model(CheckpointClassifier())
