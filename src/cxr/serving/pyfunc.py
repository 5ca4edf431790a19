"""The trained model as an MLflow pyfunc that takes encoded images (JPEG, PNG, DICOM bytes) and serves them.

    info = log_pyfunc_model("models/cnn", registered_model_name="cxr-pneumonia")   # inside or outside a run
    # cxr serve --model models:/cxr-pneumonia/1 --port 5001   (or: mlflow models serve -m ... --env-manager local)
    # curl -X POST localhost:5001/invocations -H 'Content-Type: application/json' \
    #      -d '{"dataframe_split": {"columns": ["image"], "data": [["<base64 JPEG>"]]}}'
    # -> {"predictions": [{"probability": 0.93, "label": "PNEUMONIA", "error": null}]}

Input: a DataFrame with a column ``image`` of base64 strings (raw ``bytes`` are accepted too when
called in-process). Output: one row per input with ``probability`` (P(PNEUMONIA), the card's
temperature applied), ``label`` (at the checkpoint's threshold; ``REFER`` inside its refer band; with the
request's params ``{"operating_point": "sensitivity-95"}``, at that operating point of the card) and
``error``: a row that cannot be decoded gets a reason there and null probability/label, and the other
rows of the request are still predicted. The checkpoint folder travels as an artifact and is
preprocessed by :class:`cxr.serving.predict.Predictor`, i.e. exactly like the training cache; the
``cxr`` package itself travels as ``code_paths``. The MLflow model's metadata holds the card's
``data_source`` (what the data was), temperature and refer band; a model trained on the synthetic demo
data warns once when loaded (:class:`cxr.checkpoint.SyntheticDataWarning`).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import logging
import math
import shutil
import tempfile
import warnings
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import Model
from mlflow.pyfunc import PythonModel

from cxr.checkpoint import ModelCard, SyntheticDataWarning, synthetic_data_warning
from cxr.models import get_entry

IMAGE_COLUMN = "image"
CHECKPOINT_ARTIFACT = "checkpoint"
OUTPUT_COLUMNS = ("probability", "label", "error", "warning")
# The request's params: {"operating_point": "sensitivity-95"} labels at that point of the card ("": its threshold).
OPERATING_POINT_PARAM = "operating_point"
_log = logging.getLogger(__name__)


def decode_payload(value) -> bytes:
    """Encoded image bytes from a base64 string (data-URL prefix allowed) or raw bytes; ValueError with a reason."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.startswith("data:") and "," in text:  # data:image/jpeg;base64,....
            text = text.split(",", 1)[1]
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                "the 'image' value is not valid base64 (expected base64-encoded JPEG, PNG or DICOM bytes)"
            ) from None
    elif value is None or (isinstance(value, float) and math.isnan(value)):
        raise ValueError("the 'image' value is empty (null)")
    else:
        raise ValueError(f"the 'image' value must be a base64 string or bytes, found {type(value).__name__}")
    if not data:
        raise ValueError("the 'image' value decodes to 0 bytes")
    return data


def _image_values(model_input) -> list:
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN in model_input.columns:
            return list(model_input[IMAGE_COLUMN])
        if model_input.shape[1] == 1:
            return list(model_input.iloc[:, 0])
        raise ValueError(
            f"expected a DataFrame with a column {IMAGE_COLUMN!r}, found columns {list(model_input.columns)}"
        )
    if isinstance(model_input, pd.Series):
        return list(model_input)
    if isinstance(model_input, dict) and IMAGE_COLUMN in model_input:
        v = model_input[IMAGE_COLUMN]
        return list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v]
    if isinstance(model_input, (str, bytes, bytearray)):
        return [model_input]
    if isinstance(model_input, (list, tuple, np.ndarray)):
        return list(np.asarray(model_input, dtype=object).reshape(-1))
    raise ValueError(f"expected a DataFrame with a column {IMAGE_COLUMN!r}, found {type(model_input).__name__}")


class CxrImageModel(PythonModel):
    """pyfunc: base64/bytes images -> probability, label, error (one row per input)."""

    def load_context(self, context) -> None:
        from cxr.serving.predict import Predictor

        self.predictor = Predictor.from_dir(context.artifacts[CHECKPOINT_ARTIFACT], device="cpu")
        message = synthetic_data_warning(self.predictor.card.data_source)
        if message:  # once, at load: the server's log says it before the first request is answered
            warnings.warn(message, SyntheticDataWarning, stacklevel=2)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """One output row per input row; never raises for what a row holds.

        A request that is not a table of images raises an MlflowException without a stack trace
        (the scoring server would otherwise send the client a traceback with server paths); an
        unexpected failure is logged here with its traceback and answered with a short error.
        """
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import BAD_REQUEST

        try:
            values = _image_values(model_input)
            predictor = self.predictor.at((params or {}).get(OPERATING_POINT_PARAM) or None)
        except ValueError as exc:  # not images, or an operating point the card lacks or cannot support
            raise MlflowException(str(exc), error_code=BAD_REQUEST) from None
        try:
            return self._predict_values(values, predictor)
        except Exception as exc:
            _log.exception("cxr model: prediction failed")
            raise MlflowException(
                f"the model could not answer this request ({type(exc).__name__}); see the server log",
                error_code=BAD_REQUEST,
            ) from None

    def _predict_values(self, values: list, predictor) -> pd.DataFrame:
        decoded: list[bytes | None] = []
        names: list[str] = []
        errors: dict[int, str] = {}
        for i, v in enumerate(values):
            try:
                decoded.append(decode_payload(v))
                names.append(f"row {i}")
            except ValueError as exc:
                errors[i] = str(exc)
                decoded.append(None)
                names.append(f"row {i}")
        ok = [i for i in range(len(values)) if i not in errors]
        sources = [d for d in decoded if d is not None]  # None exactly where errors has the row
        table = predictor.predict_sources(sources, [names[i] for i in ok], batch_size=32)
        out = pd.DataFrame(
            {
                "probability": [None] * len(values),
                "label": [None] * len(values),
                "error": [errors.get(i) for i in range(len(values))],
                "warning": [None] * len(values),
            },
            dtype=object,
        )
        for i, (_, row) in zip(ok, table.iterrows()):
            if isinstance(row["error"], str):
                out.at[i, "error"] = row["error"]
            else:
                out.at[i, "probability"] = float(row["probability"])
                out.at[i, "label"] = row["label"]
                out.at[i, "warning"] = row["warning"] if isinstance(row["warning"], str) else None
        return out


def _example_image_b64(size: int) -> str:
    """A small mid-grey PNG, base64: the logged input example (any size works; it is resized)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), 128, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", IMAGE_COLUMN)]),
        # Null in a row that could not be read (probability, label) or that was (error).
        outputs=Schema(
            [
                ColSpec("double", "probability", required=False),
                ColSpec("string", "label", required=False),
                ColSpec("string", "error", required=False),
                ColSpec("string", "warning", required=False),
            ]
        ),
        params=ParamSchema([ParamSpec(OPERATING_POINT_PARAM, "string", "")]),
    )


def pip_requirements(card: ModelCard | None = None) -> list[str]:
    """Pinned requirements of the serving environment (the versions installed here)."""
    from importlib.metadata import PackageNotFoundError, version

    names = ["mlflow", "torch", "torchvision", "numpy", "pandas", "pillow", "pydicom", "scikit-learn", "tqdm", "pyyaml"]
    if card is not None:
        names += list(get_entry(card.name).requirements)
    reqs = []
    for n in names:
        try:
            reqs.append(f"{n}=={version(n).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(n)
    return reqs


_MODEL_CODE = '''"""MLflow models-from-code entry point: the cxr image classifier (cxr.serving.CxrImageModel)."""
import mlflow.models

from cxr.serving.pyfunc import CxrImageModel

mlflow.models.set_model(CxrImageModel())
'''


def log_pyfunc_model(
    model_dir: str | Path,
    name: str = "model",
    registered_model_name: str | None = None,
    run_id: str | None = None,
    tracking_uri: str | None = None,
    **kwargs,
):
    """Log checkpoint folder ``model_dir`` as a pyfunc model (artifact ``checkpoint``); returns MLflow's ModelInfo.

    Logs into run ``run_id`` (a finished run stays finished: it is not reopened), else into the active run if
    there is one, in the store ``tracking_uri`` (default: MLflow's current one). ``registered_model_name``
    also registers it in the Model Registry. Extra keyword arguments go to MLflow's pyfunc ``save_model``.
    """
    import cxr
    from cxr import checkpoint

    model_dir = Path(model_dir)
    card = checkpoint.load_card(model_dir)  # fails early, with the fix, when the folder is not a checkpoint
    if not (model_dir / checkpoint.WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{model_dir} has {checkpoint.META_FILE} but no {checkpoint.WEIGHTS_FILE}")
    with tempfile.TemporaryDirectory() as tmp:
        # The package without caches, so the served environment imports the code this model was logged with.
        code = Path(tmp) / "cxr"
        shutil.copytree(Path(cxr.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # Models from code: MLflow stores this script, not a pickled object (no cloudpickle at load time).
        entry = Path(tmp) / "cxr_pyfunc.py"
        entry.write_text(_MODEL_CODE)
        ckpt = Path(tmp) / "checkpoint"
        ckpt.mkdir()
        for f in (checkpoint.WEIGHTS_FILE, checkpoint.META_FILE):
            shutil.copy2(model_dir / f, ckpt / f)
        args = dict(
            name=name,
            python_model=str(entry),
            artifacts={CHECKPOINT_ARTIFACT: str(ckpt)},
            code_paths=[str(code)],
            signature=signature(),
            input_example=pd.DataFrame({IMAGE_COLUMN: [_example_image_b64(card.cache_size)]}),
            pip_requirements=pip_requirements(card),
            registered_model_name=registered_model_name,
            metadata={
                "cxr_model": card.name,
                "threshold": card.threshold,
                "temperature": card.temperature,
                "refer_band": list(card.refer_band) if card.refer_band else None,
                "refer": card.refer,
                "operating_points": {p["name"]: p.get("threshold") for p in card.operating_points()},
                "data_version": card.data_version,
                "data_source": dataclasses.asdict(card.data_source),
            },
        )
        args.update(kwargs)
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        with warnings.catch_warnings():
            # MLflow loads the model once here to check the input example: not a use, so no warning (the
            # load that serves or predicts warns; the registered version's description names the data).
            warnings.simplefilter("ignore", SyntheticDataWarning)
            # mlflow.pyfunc.log_model with a run id: Model.log is what it calls, and takes one.
            return Model.log(artifact_path=None, flavor=mlflow.pyfunc, run_id=run_id, **args)


def scoring_app(model_uri: str):
    """MLflow's scoring server app (POST /invocations, GET /ping) for the logged or registered ``model_uri``."""
    from mlflow.pyfunc import scoring_server

    return scoring_server.init(scoring_server.load_model_with_mlflow_config(model_uri))
