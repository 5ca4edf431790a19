"""cxr.serving.predict and the `cxr predict` command: every input kind, agreement with evaluation, bad files."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr import checkpoint
from cxr.checkpoint import DataSource
from cxr.data.cache import build_cache, load_split
from cxr.data.config import DataConfig, PreprocessConfig
from cxr.data.manifest import MANIFEST_COLUMNS
from cxr.serving import cli
from cxr.serving.predict import Predictor, collect_inputs
from cxr.serving.which_model import ModelNotFoundError, best_model_dir
from cxr.training.engine import predict_probabilities
from toydata import RAMP16, make_checkpoint, write_dicom

CACHE, SIZE = 32, 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "cnn")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """One file of each kind, in a nested folder."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(1)
    (root / "sub" / "deeper").mkdir(parents=True)
    files = {
        "jpeg": root / "a.jpeg",
        "png8": root / "sub" / "b.png",
        "png16": root / "sub" / "c16.png",
        "rgba": root / "sub" / "deeper" / "d.png",
        "dcm": root / "sub" / "e.dcm",
        "dcm_noext": root / "sub" / "deeper" / "scan0001",
    }
    Image.fromarray(rng.integers(0, 256, (70, 50), dtype=np.uint8)).convert("RGB").save(files["jpeg"], quality=92)
    Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(files["png8"])
    Image.fromarray(RAMP16).save(files["png16"])
    Image.fromarray(rng.integers(0, 256, (30, 45, 4), dtype=np.uint8)).save(files["rgba"])
    write_dicom(
        files["dcm"],
        RAMP16,
        photometric="MONOCHROME1",
        bits_stored=12,
        slope=1.0,
        intercept=0.0,
        window=(2400.0, 2000.0),
    )
    write_dicom(files["dcm_noext"], RAMP16, bits_stored=12)
    (root / "notes.txt").write_text("not an image, not picked up from a folder")
    return files


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor.from_dir(model_dir, device="cpu")


# ---- the core ------------------------------------------------------------------------------------


def test_every_input_kind_is_predicted(predictor, images):
    table = predictor.predict_paths([images["jpeg"].parent], batch_size=4)
    assert list(table.columns) == ["file", "probability", "label", "error", "warning"]
    # Recursive, DICOM by content; the .txt file is not predicted but reported (every file used or reported).
    notes = str(images["jpeg"].parent / "notes.txt")
    assert sorted(table["file"]) == sorted([str(p) for p in images.values()] + [notes])
    assert table.set_index("file").loc[notes, "error"].startswith("not an image file type")
    table = table[table["file"] != notes]
    assert table["error"].isna().all()
    p = table["probability"].to_numpy(dtype=float)
    assert np.all((p >= 0) & (p <= 1))
    expected = np.where(p >= predictor.threshold, "PNEUMONIA", "NORMAL")
    np.testing.assert_array_equal(table["label"].to_numpy(), expected)
    # Each row is the model's answer on that file's cache-size pixels, whatever the batch it came in.
    for f, prob in zip(table["file"], p):
        assert prob == pytest.approx(float(predictor.predict_pixels(predictor.load(f))[0]), abs=1e-6)


def test_predict_uses_the_checkpoint_preprocessing(tmp_path, images):
    """cache_size, resize mode, image_size and mean/std come from model.json, not literals."""
    a = Predictor.from_dir(make_checkpoint(tmp_path / "a", cache_size=32, image_size=24, resize="stretch"))
    b = Predictor.from_dir(make_checkpoint(tmp_path / "b", cache_size=20, image_size=16, resize="pad"))
    assert a.load(images["jpeg"]).shape == (32, 32) and b.load(images["jpeg"]).shape == (20, 20)
    padded = b.load(images["jpeg"])  # 50 x 70 image: black bars left and right
    assert (padded[:, 0] == 0).all() and (padded[:, -1] == 0).all()
    x = b.model_inputs(padded[None])
    assert tuple(x.shape) == (1, 3, 16, 16)
    assert float(x.min()) == pytest.approx(-1.0)  # black -> (0 - 0.5) / 0.5


def _manifest(paths: list[str]) -> pd.DataFrame:
    rows = [
        {
            "path": p,
            "label": "PNEUMONIA" if i % 2 else "NORMAL",
            "patient_id": f"train/p{i}",
            "source_split": "train",
            "split": "test",
            "sha256": "0" * 64,
            "width": 0,
            "height": 0,
            "mode": "L",
        }
        for i, p in enumerate(paths)
    ]
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS)


def _agreement(model_dir: Path, raw: Path, rel_paths: list[str], tmp_path: Path, resize: str) -> None:
    info = build_cache(
        _manifest(rel_paths),
        raw,
        tmp_path / f"cache-{resize}",
        PreprocessConfig(cache_size=CACHE, resize=resize, workers=1),
        progress=False,
    )
    cached = load_split(tmp_path / f"cache-{resize}", "test")
    model, meta = checkpoint.load(model_dir)
    assert meta.cache_size == info["cache_size"]
    want = predict_probabilities(
        model, cached.images, mean=meta.mean, std=meta.std, image_size=meta.image_size, device="cpu"
    )
    pred = Predictor(model, meta)
    table = pred.predict_paths([raw / p for p in cached.paths], batch_size=3)
    assert table["error"].isna().all()
    np.testing.assert_allclose(table["probability"].to_numpy(dtype=float), want, atol=1e-5, rtol=0)
    for p, img in zip(cached.paths, cached.images):
        np.testing.assert_array_equal(pred.load(raw / p), img)  # the very pixels the cache holds


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_agrees_with_evaluation_on_cached_images(tmp_path, images, resize):
    raw = images["jpeg"].parent
    files = [images[k] for k in ("jpeg", "png8", "png16", "rgba")]
    model_dir = make_checkpoint(tmp_path / "m", resize=resize)
    _agreement(model_dir, raw, [str(f.relative_to(raw)) for f in files], tmp_path, resize)


@pytest.mark.shared_data
def test_agrees_with_evaluation_on_real_fullres_jpegs(tmp_path, shared_data):
    raw = shared_data / "kermany-fullres"
    rel = [
        str(p.relative_to(raw)) for c in ("NORMAL", "PNEUMONIA") for p in sorted((raw / "train" / c).glob("*.jpeg"))[:2]
    ]
    assert len(rel) == 4
    _agreement(make_checkpoint(tmp_path / "m"), raw, rel, tmp_path, "stretch")


def test_temperature_and_refer_band_of_the_card(tmp_path, images, capsys):
    """The card's temperature changes the probability (not the ranking); inside its refer band the label is
    REFER and the probability is still given, in the table, the CSV and the summary line."""
    files = [str(f) for f in images.values()]
    a = Predictor.from_dir(make_checkpoint(tmp_path / "plain")).predict_sources(files)
    scaled = Predictor.from_dir(make_checkpoint(tmp_path / "scaled", temperature=0.5)).predict_sources(files)
    q = np.sort(scaled["probability"].to_numpy())
    band = (float(q[1]), float(q[3]))  # the 2nd and 3rd of the six inside
    band_dir = make_checkpoint(tmp_path / "band", temperature=0.5, refer_band=band, threshold=float(q[2]))
    banded = Predictor.from_dir(band_dir)
    b = banded.predict_sources(files)
    np.testing.assert_allclose(b["probability"], banded.card.calibrate(a["probability"].to_numpy()), atol=1e-6)
    np.testing.assert_allclose(b["probability"], scaled["probability"])  # the band leaves probabilities alone
    p = b["probability"].to_numpy()
    inside = (p >= band[0]) & (p < band[1])
    expected = np.where(inside, "REFER", np.where(p >= q[2], "PNEUMONIA", "NORMAL"))
    assert list(b["label"]) == list(expected) and inside.any() and not inside.all()
    assert cli.main(["predict", *files, "--model", str(band_dir), "--format", "csv", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    table = pd.read_csv(io.StringIO(out))
    assert list(table["label"]) == list(expected) and table["probability"].notna().all()
    assert f"temperature 0.500, REFER for {band[0]:.4f} <= p < {band[1]:.4f}" in err
    assert f"{int(inside.sum())} REFER (inside the refer band)" in err


def test_globs_files_and_missing_inputs(images):
    root = images["jpeg"].parent
    files, errors = collect_inputs(
        [str(root / "**" / "*.png"), images["dcm"], images["dcm"], root / "nope.jpeg", str(root / "*.gif")]
    )
    assert sorted(map(str, files)) == sorted(str(images[k]) for k in ("png8", "png16", "rgba", "dcm"))
    assert [e.source for e in errors] == [str(root / "nope.jpeg"), str(root / "*.gif")]


# ---- the command line ----------------------------------------------------------------------------


def test_cli_corrupt_file_among_good_ones(tmp_path, model_dir, images, capsys):
    folder = tmp_path / "batch"
    folder.mkdir()
    for k in ("jpeg", "png8", "dcm"):
        shutil.copy(images[k], folder / images[k].name)
    (folder / "broken.jpeg").write_bytes(images["jpeg"].read_bytes()[:300])  # truncated
    (folder / "empty.png").write_bytes(b"")
    rc = cli.main(["predict", str(folder), "--model", str(model_dir), "--format", "csv", "--batch-size", "2"])
    out, err = capsys.readouterr()
    assert rc == 1
    table = pd.read_csv(__import__("io").StringIO(out))
    assert list(table.columns) == ["file", "probability", "label", "error", "warning", "model", "trained_on"]
    assert set(table["model"]) == {str(model_dir)}  # each row says which model answered
    bad = table[table["error"].notna()].set_index("file")
    assert sorted(Path(f).name for f in bad.index) == ["broken.jpeg", "empty.png"]
    assert "truncated" in bad.loc[str(folder / "broken.jpeg"), "error"]
    assert "empty" in bad.loc[str(folder / "empty.png"), "error"]
    good = table[table["error"].isna()]
    assert (
        len(good) == 3 and good["probability"].between(0, 1).all() and good["label"].isin(["NORMAL", "PNEUMONIA"]).all()
    )
    assert "broken.jpeg" in err and "empty.png" in err  # reported on stderr too


def test_cli_formats_output_file_and_exit_code_zero(tmp_path, model_dir, images, capsys):
    out_file = tmp_path / "out" / "pred.jsonl"
    rc = cli.main(
        [
            "predict",
            str(images["jpeg"]),
            str(images["png16"]),
            "--model",
            str(model_dir),
            "--format",
            "jsonl",
            "--output",
            str(out_file),
        ]
    )
    assert rc == 0
    assert capsys.readouterr().out == ""
    recs = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["file"] for r in recs] == [str(images["jpeg"]), str(images["png16"])]
    assert all(r["error"] is None and 0 <= r["probability"] <= 1 for r in recs)

    smooth = tmp_path / "smooth.png"  # radiograph-plausible (big enough, not noise): no warning
    Image.fromarray(np.add.outer(np.arange(64), np.arange(48)).astype(np.uint8) * 2).save(smooth)
    rc = cli.main(["predict", str(smooth), "--model", str(model_dir), "--format", "jsonl"])
    rec = json.loads(capsys.readouterr().out)
    rc = cli.main(["predict", str(smooth), "--model", str(model_dir)])
    out = capsys.readouterr().out
    assert rc == 0
    header, rule, row = out.splitlines()
    assert header.split() == ["file", "probability", "label"]  # no error or warning column when there are none
    assert row.split()[0] == str(smooth) and row.split()[2] in ("NORMAL", "PNEUMONIA")
    assert float(row.split()[1]) == pytest.approx(rec["probability"], abs=1e-4)


def test_cli_grad_cam_overlays(tmp_path, model_dir, images, capsys):
    cam = tmp_path / "cam"
    rc = cli.main(
        [
            "predict",
            str(images["jpeg"]),
            str(images["dcm"]),
            "--model",
            str(model_dir),
            "--cam",
            str(cam),
            "--format",
            "csv",
        ]
    )
    assert rc == 0
    table = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert [Path(p).name for p in table["cam"]] == ["a_cam.png", "e_cam.png"]
    for p in table["cam"]:
        with Image.open(p) as im:
            assert im.mode in ("RGB", "RGBA") and im.size != (CACHE, CACHE)


def test_cli_grad_cam_figure_grows_with_the_input_image(tmp_path, model_dir, capsys):
    rng = np.random.default_rng(3)
    small, large = tmp_path / "small.png", tmp_path / "large.png"
    Image.fromarray(rng.integers(0, 256, (90, 120), dtype=np.uint8)).save(small)
    Image.fromarray(rng.integers(0, 256, (270, 360), dtype=np.uint8)).save(large)
    cam = tmp_path / "cam"
    rc = cli.main(["predict", str(small), str(large), "--model", str(model_dir), "--cam", str(cam), "-f", "jsonl"])
    assert rc == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    sizes = []
    for row in rows:
        with Image.open(row["cam"]) as im:
            sizes.append(im.size)
    # two panels (original, overlay) each at the image's own size: not the 32 px cache
    # (the wider figure may wrap its model note into fewer 14 px lines)
    assert sizes[1][0] - sizes[0][0] == 2 * (360 - 120) and 270 - 90 - 28 <= sizes[1][1] - sizes[0][1] <= 270 - 90
    assert min(sizes[0]) > CACHE


def test_cli_warns_once_about_a_model_trained_on_synthetic_data(tmp_path, images, capsys):
    """The default run's model (params.yaml's synthetic source) says what it is, once, on stderr; the output is
    unchanged. A model of real images names its data and warns of nothing."""
    synthetic = make_checkpoint(tmp_path / "synthetic", data_source=DataSource.from_config(DataConfig()))
    inputs = [str(images[k]) for k in ("jpeg", "png8", "png16")]
    rc = cli.main(["predict", *inputs, "--model", str(synthetic), "--batch-size", "1", "--format", "jsonl"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert err.count("warning: this model was trained on the synthetic demo data (generator seed 0") == 1
    assert "not on radiographs" in err and "mean nothing" in err and "make real DATA=" in err
    assert "by a model trained on synthetic data" in err.splitlines()[-1]  # the summary points back at it
    recs = [json.loads(line) for line in out.splitlines()]
    columns = ["file", "probability", "label", "error", "warning", "model", "trained_on"]
    assert len(recs) == 3 and all(list(r) == columns for r in recs)
    assert not any("synthetic" in str(r["warning"]) for r in recs)  # not a per-image warning
    assert all(r["trained_on"].startswith("the synthetic demo data") for r in recs)  # but each row names its data

    real = make_checkpoint(tmp_path / "real", data_source=DataSource("folder", "/data/chest_xray"))
    rc = cli.main(["predict", *inputs, "--model", str(real), "--batch-size", "1", "--format", "jsonl"])
    out, err = capsys.readouterr()
    assert rc == 0 and "trained on the folder /data/chest_xray" in err
    assert "synthetic" not in err and "cxr predict: warning" not in err
    assert [list(json.loads(line)) for line in out.splitlines()] == [list(r) for r in recs]


def test_default_model_is_the_compare_selection(tmp_path, model_dir, images, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli.main(["predict", str(images["jpeg"])])
    err = capsys.readouterr().err
    assert rc == 2 and "dvc repro" in err and "--model" in err
    with pytest.raises(ModelNotFoundError, match="dvc repro"):
        best_model_dir()
    (tmp_path / "reports").mkdir()
    pd.DataFrame({"model": ["vit", "cnn"], "val_auc": [0.8, 0.9], "selected": [False, True]}).to_csv(
        tmp_path / "reports" / "results.csv", index=False
    )
    shutil.copytree(model_dir, tmp_path / "models" / "cnn")
    assert best_model_dir() == Path("models") / "cnn"
    assert cli.main(["predict", str(images["jpeg"]), "--format", "jsonl"]) == 0
    assert json.loads(capsys.readouterr().out)["error"] is None


def test_python_dash_m_cxr(tmp_path, model_dir, images):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxr",
            "predict",
            str(images["png8"]),
            str(bad),
            "--model",
            str(model_dir),
            "--format",
            "csv",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "file,probability,label,error,warning,model,trained_on" and len(lines) == 3
    assert "bad.png" in proc.stderr


def _card_choices(threshold: float) -> dict:
    """A card's choices as train writes them (cxr.policy): one operating point with a threshold, one without (19
    NORMAL validation images are too few for a 95 % specificity), and no refer band for the same reason."""
    points = [
        {"name": "sensitivity-95", "class": "PNEUMONIA", "metric": "sensitivity", "target": 0.95},
        {"name": "specificity-95", "class": "NORMAL", "metric": "specificity", "target": 0.95},
    ]
    points[0].update(threshold=threshold, n=120, needs=59, confidence=0.95)
    points[1].update(threshold=None, n=19, needs=59, confidence=0.95)
    refer = {"target_error": 0.05, "status": "validation too small", "needs": 59, "n_normal": 19, "n_pneumonia": 120}
    return {"validation": {"operating_points": points}, "refer": refer}


def test_predict_at_an_operating_point_of_the_card(tmp_path, images, capsys):
    """`--operating-point sensitivity-95` labels at that point's threshold; a point validation could not support
    is refused with the reason; the card without a band says why it has none."""
    files = [str(f) for f in images.values()]
    probs = Predictor.from_dir(make_checkpoint(tmp_path / "plain")).predict_sources(files)["probability"].to_numpy()
    lowest = np.unique(probs)[:2]  # several files hold the same picture: between the two lowest probabilities
    at = float(lowest.mean())  # the card's own threshold (0.5 by default) lies elsewhere
    model = make_checkpoint(tmp_path / "m", **_card_choices(at))
    assert (
        cli.main(["predict", *files, "--model", str(model), "--format", "csv", "--operating-point", "sensitivity-95"])
        == 0
    )
    out, err = capsys.readouterr()
    table = pd.read_csv(io.StringIO(out))
    expected = np.where(probs >= at, "PNEUMONIA", "NORMAL")
    assert list(table["label"]) == list(expected) and 0 < (expected == "NORMAL").sum() < len(files)
    assert f"threshold {at:.4f}" in err and "operating point sensitivity-95 (set on validation" in err
    assert cli.main(["predict", *files, "--model", str(model), "--operating-point", "specificity-95"]) == 2
    assert "validation had 19 NORMAL images, a 95 % target needs at least 59" in capsys.readouterr().err
    assert cli.main(["predict", *files, "--model", str(model), "--format", "csv"]) == 0
    out, err = capsys.readouterr()
    assert list(pd.read_csv(io.StringIO(out))["label"]) != list(expected)  # at the card's threshold: other labels
    assert "no refer band (validation too small for a 5 % target: 19 NORMAL and 120 PNEUMONIA images" in err
    assert "REFER for" not in err
