"""Hostile and broken input to `cxr predict` and the served model (in-process pyfunc): one test per case.

    PYTHONPATH=src .venv/bin/python -m pytest tests/hostile/test_hostile_predict_serving.py -q

Still holding, tested elsewhere: the served model answers malformed payloads (bad base64, null,
not an image) row by row (tests/test_serving.py::test_logged_model_predicts_in_process and the
slow test_served_model_answers_like_predict over HTTP); a corrupt file among good ones in
`cxr predict` (tests/test_predict.py::test_cli_corrupt_file_among_good_ones).
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hostile_kit import put, xray_jpeg
from PIL import Image

from cxr.data import checks
from cxr.data.config import SplitConfig
from cxr.data.limits import ImageLimits
from cxr.serving import cli
from cxr.serving.filenames import escape_name, raw_name
from cxr.serving.imageio import ImageReadError, default_max_pixels, load_image
from cxr.serving.predict import Predictor, collect_inputs
from cxr.serving.pyfunc import CxrImageModel
from toydata import RAMP16, make_checkpoint, write_dicom

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "cnn")


@pytest.fixture(scope="module")
def predictor(model_dir) -> Predictor:
    return Predictor.from_dir(model_dir, device="cpu")


def _window_zero_dicom(path: Path) -> Path:
    return write_dicom(path, RAMP16, bits_stored=12, window=(2000.0, 0.0))


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels (a bomb's header), with almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# ---- one bad input never takes down the rest ---------------------------------------------------------


def test_dicom_with_window_width_zero_is_an_error_row_beside_a_good_jpeg_in_cxr_predict(tmp_path, model_dir, capsys):
    good = tmp_path / "IM-0001-0001.jpeg"
    good.write_bytes(xray_jpeg(1))
    bad = _window_zero_dicom(tmp_path / "ww0.dcm")
    rc = cli.main(["predict", str(good), str(bad), "--model", str(model_dir), "--format", "jsonl", "--no-progress"])
    captured = capsys.readouterr()
    rows = {r["file"]: r for r in map(json.loads, captured.out.splitlines())}
    assert rc == 1 and "Traceback" not in captured.err
    assert rows[str(good)]["error"] is None and 0 <= rows[str(good)]["probability"] <= 1
    assert rows[str(bad)]["probability"] is None and "Window Width" in rows[str(bad)]["error"]


def test_an_unexpected_failure_in_one_input_stays_in_its_row(predictor, monkeypatch):
    real = predictor._load_checked

    def flaky(source):
        if source == b"boom":
            raise KeyError("an internal surprise")
        return real(source)

    monkeypatch.setattr(predictor, "_load_checked", flaky)
    table = predictor.predict_sources([xray_jpeg(2), b"boom", xray_jpeg(3)])
    assert table["error"].isna().tolist() == [True, False, True]
    assert "KeyError" in table["error"][1]


def _serve(model_dir) -> CxrImageModel:
    model = CxrImageModel()
    model.load_context(SimpleNamespace(artifacts={"checkpoint": str(model_dir)}))
    return model


def test_served_model_answers_a_bad_dicom_per_row_without_a_stack_trace(tmp_path, model_dir):
    bad = _window_zero_dicom(tmp_path / "ww0.dcm").read_bytes()
    values = [base64.b64encode(xray_jpeg(4)).decode(), base64.b64encode(bad).decode(), "not base64!"]
    out = _serve(model_dir).predict(None, pd.DataFrame({"image": values}))
    assert out["probability"][0] is not None and out["error"][0] is None
    assert out["probability"][1] is None and "Window Width" in out["error"][1]
    assert out["error"][2] and "base64" in out["error"][2]
    text = json.dumps(out.to_dict(orient="records"))
    assert "Traceback" not in text and "/src/cxr" not in text and ".py" not in text


def test_served_model_refuses_a_malformed_request_without_a_stack_trace(model_dir):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as err:
        _serve(model_dir).predict(None, pd.DataFrame({"a": [1], "b": [2]}))
    assert "stack_trace" not in err.value.json_kwargs
    assert "Traceback" not in err.value.serialize_as_json() and "'image'" in err.value.message


# ---- one pixel limit, checked before decoding ------------------------------------------------------


def test_the_pixel_limit_is_one_number_for_split_predict_and_serving(predictor):
    assert default_max_pixels() == SplitConfig().max_pixels == predictor.limits.max_pixels


def test_a_png_over_the_pixel_limit_is_refused_by_predict_as_split_quarantines_it(tmp_path, predictor):
    data = _png_claiming(12_000, 12_000)  # 144 M pixels: 1.35 GB RSS when it was decoded
    assert checks.check_bytes(data, SplitConfig().max_pixels).reason == checks.TOO_LARGE
    table = predictor.predict_sources([data])
    assert "too large, refused before decoding" in table["error"][0] and "split.max_pixels" in table["error"][0]


def test_dicom_rows_columns_over_the_pixel_limit_are_refused_before_decoding(tmp_path):
    import pydicom

    path = write_dicom(tmp_path / "bomb.dcm", RAMP16, bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 65_000, 65_000  # what a 2 MB RLE file can claim
    ds.save_as(path)
    with pytest.raises(ImageReadError) as err:
        load_image(path, 32)
    assert "refused before decoding" in err.value.reason and "65000x65000" in err.value.reason


def test_a_lower_pixel_limit_given_to_the_predictor_applies(tmp_path, model_dir):
    small = Predictor.from_dir(model_dir, device="cpu")
    small.limits = ImageLimits(1000, small.limits.plausibility)
    table = small.predict_sources([xray_jpeg(5, size=(64, 48))])
    assert "split.max_pixels = 1,000" in table["error"][0]


# ---- every file used or reported; nothing blocks ---------------------------------------------------


@pytest.mark.timeout(20)
def test_fifo_in_a_predict_folder_is_reported_not_opened(tmp_path):
    (tmp_path / "IM-0001-0001.jpeg").write_bytes(xray_jpeg(1))
    os.mkfifo(tmp_path / "scan0001")  # extension-less: used to be opened to look for DICM
    os.mkfifo(tmp_path / "pipe.jpeg")
    files, errors = collect_inputs([tmp_path])
    assert files == [tmp_path / "IM-0001-0001.jpeg"]
    assert sorted(Path(e.source).name for e in errors) == ["pipe.jpeg", "scan0001"]
    assert all("not a regular file" in e.reason for e in errors)


def test_webp_gif_and_jfif_in_a_folder_are_predicted_and_other_files_reported(tmp_path, predictor):
    gray = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8) * 2
    for name, fmt in (("a.webp", "WEBP"), ("b.gif", "GIF"), ("c.jfif", "JPEG")):
        Image.fromarray(gray).save(tmp_path / name, format=fmt)
    (tmp_path / "readme.txt").write_text("notes")
    table = predictor.predict_paths([tmp_path]).set_index("file")
    for name in ("a.webp", "b.gif", "c.jfif"):
        assert pd.isna(table.loc[str(tmp_path / name), "error"]), table.loc[str(tmp_path / name)]
    assert "not an image file type" in table.loc[str(tmp_path / "readme.txt"), "error"]


# ---- plausibility: a warning column -----------------------------------------------------------------


@pytest.mark.parametrize(
    "case,arr,code",
    [
        ("black", np.zeros((64, 64), np.uint8), "blank_or_constant"),
        ("white", np.full((64, 64), 255, np.uint8), "blank_or_constant"),
        ("one_pixel", np.full((1, 1), 90, np.uint8), "too_small"),
        ("one_by_20000", np.tile(np.arange(200, dtype=np.uint8), 100)[None, :], "too_small"),
        ("strip", np.add.outer(np.arange(40), np.arange(2000) // 10).astype(np.uint8), "extreme_aspect_ratio"),
        ("noise", np.random.default_rng(0).integers(0, 256, (128, 128), dtype=np.uint8), "noise_not_an_image"),
    ],
)
def test_an_implausible_image_is_predicted_with_a_warning(predictor, case, arr, code):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    row = predictor.predict_sources([buf.getvalue()]).iloc[0]
    assert pd.isna(row["error"]) and row["label"] in ("NORMAL", "PNEUMONIA")
    assert row["warning"].startswith(code) and "not a chest radiograph" in row["warning"]


def test_a_plausible_image_gets_no_warning(predictor):
    assert predictor.predict_sources([xray_jpeg(9, size=(200, 160))])["warning"].isna().all()


# ---- round two: names that break a CSV or a spreadsheet, what a folder scan must not pass over ------


def test_cxr_predict_csv_keeps_one_row_per_image_and_neutralises_formulas(tmp_path, model_dir, capsys, monkeypatch):
    names = ["IM-0914-0001\rcr.jpeg", "=HYPERLINK(1).jpeg", "@SUM(1).jpeg", "+1.jpeg", "-2.jpeg", "a,b.jpeg"]
    for i, name in enumerate(names):
        (tmp_path / name).write_bytes(xray_jpeg(i))
    monkeypatch.chdir(tmp_path)  # `cxr predict .` in the folder: the cells are the bare file names
    args = ["predict", ".", "--model", str(model_dir), "--no-progress", "--format"]
    assert cli.main([*args, "csv"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert len(table) == len(names) and table["probability"].notna().all()  # \r used to split a row in two
    # A cell starting with = + - @ is text in a spreadsheet, not a formula (OWASP): prefixed with '.
    expected = {("'" + n if n[0] in "=+-@" else n) for n in names}
    assert set(table["file"]) == expected
    assert cli.main([*args, "jsonl"]) == 0
    raw = {json.loads(line)["file"] for line in capsys.readouterr().out.splitlines()}
    assert raw == set(names)  # JSONL keeps the names as they are


def test_a_hidden_sub_folder_and_a_link_in_a_scanned_folder_are_rows_with_their_reason(tmp_path):
    scan = tmp_path / "scan"
    (scan / ".sub").mkdir(parents=True)
    (scan / "IM-0001-0001.jpeg").write_bytes(xray_jpeg(1))
    (scan / ".sub" / "IM-0002-0001.jpeg").write_bytes(xray_jpeg(2))  # used to be skipped without a row
    outside = tmp_path / "elsewhere.jpeg"
    outside.write_bytes(xray_jpeg(3))
    (scan / "link.jpeg").symlink_to(outside)  # used to be followed (fetch never follows one)
    files, errors = collect_inputs([scan])
    assert files == [scan / "IM-0001-0001.jpeg"]
    reasons = {Path(e.source).name: e.reason for e in errors}
    assert "hidden folder: not scanned" in reasons[".sub"] and "cxr predict" in reasons[".sub"]
    assert "symbolic link" in reasons["link.jpeg"] and "not followed" in reasons["link.jpeg"]


def test_an_undecodable_compressed_dicom_is_a_one_line_error_in_the_table(tmp_path, model_dir, capsys):
    import pydicom
    from pydicom.encaps import encapsulate

    path = write_dicom(tmp_path / "jpegls.dcm", RAMP16, bits_stored=12)
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.80"  # JPEG-LS lossless: no decoder installed
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7" + b"not really jpeg-ls" * 4])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    good = tmp_path / "IM-0001-0001.jpeg"
    good.write_bytes(xray_jpeg(1))
    rc = cli.main(["predict", str(good), str(path), "--model", str(model_dir), "--no-progress"])
    out = capsys.readouterr().out.splitlines()
    assert rc == 1 and len(out) == 4  # header, rule, two rows: pydicom's multi-line message used to add lines
    assert "JPEG-LS" in out[3] and "decoder plugin" in out[3]


# ---- round three: a file that is not a decodable image is refused in bounded time and memory -------


def _bytes_read() -> int:
    """Bytes this process has read through system calls so far (Linux: /proc/self/io's rchar)."""
    return int(Path("/proc/self/io").read_text().split("rchar:")[1].split()[0])


@pytest.mark.timeout(30)
def test_a_zero_filled_dicom_beside_a_good_jpeg_is_refused_after_its_first_bytes(tmp_path, model_dir, capsys):
    good = put(tmp_path / "scans" / "IM-0001-0001.jpeg", xray_jpeg(1))
    zeros = tmp_path / "scans" / "scan.dcm"
    with open(zeros, "wb") as f:
        f.truncate(1 << 30)  # `truncate -s 1G scan.dcm`: sparse, no disk used
    before = _bytes_read()
    rc = cli.main(["predict", str(good.parent), "--model", str(model_dir), "--no-progress", "--format", "jsonl"])
    read = _bytes_read() - before  # pydicom's force=True used to read it all (minutes, 800 MB resident)
    rows = {r["file"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rc == 1 and rows[str(good)]["error"] is None and rows[str(good)]["probability"] is not None
    assert "only zero bytes" in rows[str(zeros)]["error"] and rows[str(zeros)]["probability"] is None
    assert read < 16 << 20


@pytest.mark.timeout(10)
def test_served_model_refuses_dicm_and_zeros_without_parsing_them_all(model_dir):
    bomb = bytes(128) + b"DICM" + bytes(32 << 20)  # 14 s before, most of it pydicom parsing empty elements
    values = [base64.b64encode(xray_jpeg(4)).decode(), base64.b64encode(bomb).decode()]
    out = _serve(model_dir).predict(None, pd.DataFrame({"image": values}))
    assert out["probability"][0] is not None and out["error"][0] is None
    assert out["probability"][1] is None and "not a DICOM image" in out["error"][1]


def test_a_dicom_larger_than_its_header_declares_is_refused_before_reading_it_whole(tmp_path, predictor):
    path = write_dicom(tmp_path / "padded.dcm", RAMP16, bits_stored=12)
    with open(path, "ab") as f:
        f.truncate(path.stat().st_size + (256 << 20))  # 256 MB after 20x24 pixels of 2 bytes
    row = predictor.predict_sources([str(path)]).iloc[0]
    assert row["probability"] != row["probability"] and "header declares 20x24 pixels (960 bytes)" in row["error"]


# ---- round three: every computed result reaches its output -----------------------------------------


@pytest.mark.parametrize("fmt", list(cli.FORMATS))
def test_a_file_name_that_is_not_utf8_is_a_row_whose_bytes_can_be_recovered(tmp_path, model_dir, capsys, fmt):
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "IM-0001-0001.jpeg").write_bytes(xray_jpeg(1))
    raw = os.fsencode(folder) + b"/bad\xff\xfe.jpeg"
    Path(os.fsdecode(raw)).write_bytes(xray_jpeg(2))  # a name intake would rename; predict reads it as it is
    named = os.fsdecode(raw)  # the same file named on the command line: one row (duplicates are dropped)
    rc = cli.main(["predict", str(folder), named, "--model", str(model_dir), "--no-progress", "--format", fmt])
    out = capsys.readouterr().out  # used to be empty: UnicodeEncodeError (surrogates) while building the table
    if fmt == "jsonl":
        cells = [json.loads(line)["file"] for line in out.splitlines()]
    else:
        cells = pd.read_csv(io.StringIO(out))["file"] if fmt == "csv" else out.split()
    cell = next(c for c in cells if "bad" in c)
    assert rc == 0 and cell.endswith("bad\\xff\\xfe.jpeg") and raw_name(cell) == raw
    assert Path(os.fsdecode(raw_name(escape_name("a\\b\udcff")))).name == "a\\b\udcff"  # a backslash is \\


@pytest.mark.parametrize(
    "option,make,expected",
    [
        ("--output", lambda d: d, "is a folder, expected a file name"),
        ("--output", lambda d: put(d / "taken.txt", b"x") / "out.csv", "cannot create the folder"),
        ("--cam", lambda d: put(d / "cams.png", b"x"), "is a file, expected a folder"),
    ],
)
def test_an_unusable_output_or_cam_is_refused_before_any_prediction(
    tmp_path, model_dir, capsys, option, make, expected
):
    good = put(tmp_path / "in" / "IM-0001-0001.jpeg", xray_jpeg(1))
    dest = make(tmp_path)
    rc = cli.main(["predict", str(good), "--model", str(model_dir), "--no-progress", option, str(dest)])
    err = capsys.readouterr().err.splitlines()
    # used to predict every image first, then raise IsADirectoryError / FileExistsError
    assert rc == cli.EXIT_USAGE and len(err) == 1 and expected in err[0] and option in err[0]
