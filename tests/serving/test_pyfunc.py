"""cxr.serving.pyfunc: the pyfunc model logged to a temporary MLflow store, loaded in-process and served over HTTP."""

from __future__ import annotations

import base64
import contextlib
import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_predict import make_checkpoint

from cxr.checkpoint import DataSource, SyntheticDataWarning
from cxr.data.config import DataConfig
from cxr.serving.predict import Predictor
from cxr.serving.pyfunc import decode_payload, log_pyfunc_model
from servers import mlflow_process

REGISTERED = "cxr-test-pneumonia"


def _jpeg(seed: int, shape=(90, 70)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@contextlib.contextmanager
def using_store(uri: str):
    """Point MLflow's tracking and registry at ``uri`` for a while (explicit URIs beat MLFLOW_TRACKING_URI).

    mlflow.set_*_uri also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI for subprocesses: both are put
    back exactly as they were (a leaked registry URI once sent later tests' pipelines to this store)."""
    import mlflow

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)  # not set: resolved from the environment again
        mlflow.set_registry_uri(None)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A fresh sqlite tracking store + artifact folder in tmp, the tiny checkpoint logged and registered there."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    model_dir = make_checkpoint(root / "ckpt" / "cnn", threshold=0.5)
    with using_store(uri):
        exp = mlflow.create_experiment("serving-test", artifact_location=(root / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp):
            info = log_pyfunc_model(model_dir, registered_model_name=REGISTERED)
    return {"uri": uri, "model_dir": model_dir, "info": info, "root": root}


def test_decode_payload():
    assert decode_payload(_b64(b"abc")) == b"abc"
    assert decode_payload("data:image/png;base64," + _b64(b"abc")) == b"abc"
    assert decode_payload(b"raw") == b"raw"
    for bad, why in (("not base64!", "not valid base64"), ("", "0 bytes"), (None, "empty"), (3, "must be")):
        with pytest.raises(ValueError, match=why):
            decode_payload(bad)


def test_logged_model_predicts_in_process(store):
    import mlflow

    info = store["info"]
    assert info.registered_model_version is not None
    assert [c.name for c in info.signature.inputs.inputs] == ["image"]
    with using_store(store["uri"]), warnings.catch_warnings():
        warnings.simplefilter("error", SyntheticDataWarning)  # a card that does not say synthetic: no warning
        model = mlflow.pyfunc.load_model(f"models:/{REGISTERED}/{info.registered_model_version}")
    assert model.metadata.metadata["data_source"] == {"kind": "unknown", "location": None, "settings": {}}
    good = [_jpeg(1), _jpeg(2, (40, 120))]
    df = pd.DataFrame({"image": [_b64(good[0]), "%%% not base64", _b64(b"GIF89a broken"), _b64(good[1])]})
    out = model.predict(df)
    assert list(out.columns) == ["probability", "label", "error", "warning"] and len(out) == 4
    ref = Predictor.from_dir(store["model_dir"]).predict_sources(good)
    np.testing.assert_allclose(out["probability"].iloc[[0, 3]].astype(float), ref["probability"], atol=1e-6)
    assert list(out["label"].iloc[[0, 3]]) == list(ref["label"])
    assert out["error"].iloc[[0, 3]].isna().all()
    assert "base64" in out["error"].iloc[1] and "not a recognised image format" in out["error"].iloc[2]
    assert out["probability"].iloc[[1, 2]].isna().all()
    raw = model.predict(pd.DataFrame({"image": [good[0]]}))  # raw bytes, in-process
    assert float(raw["probability"].iloc[0]) == pytest.approx(float(out["probability"].iloc[0]), abs=1e-6)


def test_served_model_answers_refer_inside_the_band(tmp_path):
    """The pyfunc's rows are the Predictor's: REFER inside the card's band, the probability given as well."""
    from cxr.serving.pyfunc import CxrImageModel

    served = CxrImageModel()
    served.predictor = Predictor.from_dir(make_checkpoint(tmp_path / "m", refer_band=(0.0, 1.1), temperature=0.5))
    out = served.predict(None, pd.DataFrame({"image": [_b64(_jpeg(1)), _b64(_jpeg(2))]}))
    assert list(out["label"]) == ["REFER", "REFER"] and out["error"].isna().all()
    ref = served.predictor.predict_sources([_jpeg(1), _jpeg(2)])
    np.testing.assert_allclose(out["probability"].astype(float), ref["probability"], atol=1e-9)


def test_served_model_answers_at_an_operating_point_of_the_card(tmp_path):
    """The request's params name an operating point of the card: its threshold, no band; an unknown one is a 400."""
    from mlflow.exceptions import MlflowException

    from cxr.serving.pyfunc import CxrImageModel, signature

    assert [p.name for p in signature().params.params] == ["operating_point"]
    points = [{"name": "sensitivity-95", "threshold": 0.0, "class": "PNEUMONIA", "target": 0.95}]
    served = CxrImageModel()
    served.predictor = Predictor.from_dir(
        make_checkpoint(tmp_path / "m", refer_band=(0.0, 1.1), validation={"operating_points": points})
    )
    df = pd.DataFrame({"image": [_b64(_jpeg(1)), _b64(_jpeg(2))]})
    assert list(served.predict(None, df)["label"]) == ["REFER", "REFER"]
    at = served.predict(None, df, params={"operating_point": "sensitivity-95"})
    assert list(at["label"]) == ["PNEUMONIA", "PNEUMONIA"] and at["error"].isna().all()
    with pytest.raises(MlflowException, match="operating point 'specificity-95' is not in the model card"):
        served.predict(None, df, params={"operating_point": "specificity-95"})


def test_a_model_trained_on_synthetic_data_warns_once_when_loaded(store, tmp_path):
    """Loaded (as `mlflow models serve` loads it), the default run's model warns what it is, once; its
    metadata holds the card's data source, and its answers keep their format. Logging it warns of nothing."""
    import mlflow

    source = DataSource.from_config(DataConfig())  # params.yaml's default: synthetic
    model_dir = make_checkpoint(tmp_path / "cnn", data_source=source)
    with using_store(store["uri"]):
        with mlflow.start_run(experiment_id=mlflow.get_experiment_by_name("serving-test").experiment_id):
            with warnings.catch_warnings(record=True) as at_log:
                warnings.simplefilter("always")
                uri = log_pyfunc_model(model_dir).model_uri
        with pytest.warns(SyntheticDataWarning, match="trained on the synthetic demo data") as caught:
            model = mlflow.pyfunc.load_model(uri)
    (message,) = [str(w.message) for w in caught if w.category is SyntheticDataWarning]
    assert "mean nothing" in message and "make real DATA=" in message
    assert not [w for w in at_log if w.category is SyntheticDataWarning]  # MLflow's check of the example
    assert model.metadata.metadata["data_source"] == dataclasses.asdict(source)
    out = model.predict(pd.DataFrame({"image": [_b64(_jpeg(1)), _b64(_jpeg(2))]}))
    assert list(out.columns) == ["probability", "label", "error", "warning"] and out["error"].isna().all()
    assert not out["warning"].astype(str).str.contains("synthetic").any()  # said at load, not per row


def _post(url: str, payload: dict, timeout: float = 60) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@pytest.fixture(scope="module")
def server(store):
    """`mlflow models serve` of the registered version, on a free port; always terminated."""
    bin_dir = str(Path(sys.executable).parent)  # `mlflow models serve` execs `uvicorn` from PATH
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store["uri"],
        "MLFLOW_REGISTRY_URI": store["uri"],
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
    }
    model = f"models:/{REGISTERED}/{store['info'].registered_model_version}"
    args = ["models", "serve", "-m", model, "--env-manager", "local"]
    with mlflow_process(args, cwd=store["root"], env=env, log=store["root"] / "serve.log", ready="/ping") as base:
        yield base


@pytest.mark.slow
def test_served_model_answers_like_predict(server, store, tmp_path):
    jpeg = tmp_path / "x.jpeg"
    jpeg.write_bytes(_jpeg(7, (120, 100)))
    want = Predictor.from_dir(store["model_dir"]).predict_paths([jpeg])

    status, body = _post(
        server + "/invocations", {"dataframe_split": {"columns": ["image"], "data": [[_b64(jpeg.read_bytes())]]}}
    )
    assert status == 200, body
    (pred,) = body["predictions"]
    assert pred["error"] is None
    assert pred["probability"] == pytest.approx(float(want["probability"].iloc[0]), abs=1e-6)
    assert pred["label"] == want["label"].iloc[0]

    # Bad rows get a reason each, good rows in the same request are still answered.
    status, body = _post(
        server + "/invocations",
        {
            "dataframe_split": {
                "columns": ["image"],
                "data": [["not base64 !!"], [_b64(b"\xff\xd8\xff garbage")], [_b64(jpeg.read_bytes())]],
            }
        },
    )
    assert status == 200, body
    bad1, bad2, ok = body["predictions"]
    assert "not valid base64" in bad1["error"] and bad1["probability"] is None and bad1["label"] is None
    assert "corrupt or truncated" in bad2["error"] or "not a recognised" in bad2["error"]
    assert ok["error"] is None and ok["probability"] == pytest.approx(pred["probability"], abs=1e-6)

    # A request of the wrong shape: a 4xx with a message, not a dead server.
    status, body = _post(server + "/invocations", {"dataframe_split": {"columns": ["picture"], "data": [["x"]]}})
    assert 400 <= status < 500 and "image" in json.dumps(body)

    status, body = _post(
        server + "/invocations", {"dataframe_split": {"columns": ["image"], "data": [[_b64(jpeg.read_bytes())]]}}
    )
    assert status == 200 and body["predictions"][0]["probability"] == pytest.approx(pred["probability"], abs=1e-6)


def test_cxr_predict_with_a_registered_model_names_it_and_leaves_nothing_behind(store, tmp_path):
    """Not on a terminal: no download frames; the model named by registered name and version in stderr, in each
    CSV row (with its training data) and in the CAM title; the download folder removed."""
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=store["uri"]).set_registered_model_alias(REGISTERED, "champion", "1")
    image = tmp_path / "x.jpeg"
    image.write_bytes(_jpeg(3))
    (tmp := tmp_path / "tmp").mkdir()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"], "TMPDIR": str(tmp)}
    cxr = str(Path(sys.executable).parent / "cxr")
    cmd = [cxr, "predict", str(image), "--model", f"models:/{REGISTERED}@champion", "--format", "csv"]
    out = subprocess.run([*cmd, "--cam", str(tmp_path / "cam")], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    name = f"{REGISTERED} version 1 (models:/{REGISTERED}@champion)"
    assert f"model {name}" in out.stderr
    assert "\r" not in out.stderr and "Downloading artifacts" not in out.stderr
    (row,) = list(csv.DictReader(io.StringIO(out.stdout)))
    assert row["model"] == name and row["trained_on"].startswith("data this model card does not record")
    assert list(tmp.iterdir()) == [], "the downloaded model was left behind"
    assert [p.name for p in (tmp_path / "cam").iterdir()] == ["x_cam.png"]


def test_cxr_predict_names_a_command_that_registers_when_the_registry_is_empty(store, tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"]}
    cxr = str(Path(sys.executable).parent / "cxr")
    out = subprocess.run(
        [cxr, "predict", "x.jpeg", "--model", "models:/no-such-model@champion"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2 and "dvc repro -f -s compare" in out.stderr
