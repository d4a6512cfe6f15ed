"""ML backend: a scikit-learn model saved with joblib, loaded once, used for many predictions.

    load_model(path) -> {"loaded": True, "model": <class name>, "n_features": int}
        loads a model saved with ``joblib.dump(model, path)``.
    predict(features) -> {"predictions": [...]}
        *features*: a list of rows (lists of numbers) or a 2-D NumPy array; a NumPy array
        comes back as an array too (binary, no JSON lists), a list as a list.
    predict_proba(features) -> {"probabilities": <array or list>, "classes": [...]}
    info() -> {"loaded": bool, "model": <class name or None>}

The model stays loaded in the kernel between calls: that is the point of a backend.
"""

import joblib
import numpy as np
from bridge_runtime import PythonBridge


class MLBackend(PythonBridge):
    def __init__(self):
        super().__init__()
        self.model = None

    def load_model(self, path: str):
        """Load a model saved with joblib.dump(model, path)."""
        self.model = joblib.load(path)
        return {
            "loaded": True,
            "model": type(self.model).__name__,
            "n_features": int(getattr(self.model, "n_features_in_", 0)),
        }

    def predict(self, features):
        """Predict one label per row of *features*."""
        predictions = self._model().predict(np.asarray(features))
        return {"predictions": predictions if _is_array(features) else predictions.tolist()}

    def predict_proba(self, features):
        """Class probabilities per row of *features*."""
        model = self._model()
        probabilities = model.predict_proba(np.asarray(features))
        return {
            "probabilities": probabilities if _is_array(features) else probabilities.tolist(),
            "classes": model.classes_.tolist(),
        }

    def info(self):
        """Whether a model is loaded, and which."""
        return {
            "loaded": self.model is not None,
            "model": None if self.model is None else type(self.model).__name__,
        }

    def _model(self):
        if self.model is None:
            raise RuntimeError("no model loaded: call load_model(path) first")
        return self.model


def _is_array(value):
    return isinstance(value, np.ndarray)


if __name__ == "__main__":
    backend = MLBackend()
    backend.run()
