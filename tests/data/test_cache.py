"""Tests of cxr.data.cache and src/preprocess.py: decoding, the memory-mapped cache, its round trip.

.venv/bin/pytest tests/data/test_cache.py
"""

from __future__ import annotations

import hashlib
import json
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image, ImageFilter

from cxr.data import cache as C
from cxr.data import manifest as M
from cxr.data.config import PreprocessConfig, SplitConfig
from pipeline_repo import run_stage_script

REPO = Path(__file__).resolve().parents[2]


def radiograph(seed: int, size=(96, 80), mode="L") -> Image.Image:
    """Smooth structure plus a little grain: closer to an X-ray than pure noise, so resampling
    methods can be compared fairly."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    base = 120 + 80 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(4 * yy + rng.uniform(0, 6))
    arr = np.clip(base + rng.normal(0, 4, (h, w)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr, mode="L").filter(ImageFilter.GaussianBlur(1))
    return img.convert(mode)


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def make_raw(raw: Path, n_normal=6, n_pneu=9) -> Path:
    """Mixed sizes and storage modes, two images per patient, no official test split."""
    for p in range(n_normal):
        for k in range(2):
            size = (70 + 13 * p, 50 + 7 * k)
            save(radiograph(p * 10 + k, size), raw / f"train/NORMAL/IM-{p:04d}-{k + 1:04d}.jpeg", quality=92)
    for p in range(n_pneu):
        for k in range(2):
            size = (60 + 11 * p, 90 - 5 * k)
            mode = "RGB" if p % 3 == 0 else "L"  # the real archive stores some X-rays as RGB
            save(
                radiograph(1000 + p * 10 + k, size, mode),
                raw / f"train/PNEUMONIA/person{p}_virus_{2 * p + k}.jpeg",
                quality=92,
            )
    # A 12-bit radiograph stored as 16-bit PNG: must not saturate to white.
    ramp = (np.linspace(0, 4095, 64 * 48).reshape(48, 64)).astype(np.uint16)
    save(Image.fromarray(ramp), raw / "train/NORMAL/IM-0900-0001.png")
    return raw


@pytest.fixture
def built(tmp_path):
    """(raw, manifest path, cache dir, info) for a cache with an empty test split."""
    raw = make_raw(tmp_path / "raw")
    res = M.build_manifest(raw, SplitConfig(val_fraction=0.3, test_fraction=0.0, workers=1), progress=False)
    manifest_path = tmp_path / "manifest.csv"
    M.write_manifest(res.manifest, manifest_path)
    out = tmp_path / "cache"
    info = C.build_cache(manifest_path, raw, out, PreprocessConfig(cache_size=32, workers=1), progress=False)
    return raw, manifest_path, out, info


# --------------------------------------------------------------------------------------------
# decode_image
# --------------------------------------------------------------------------------------------


def test_decode_image_gray_uint8_and_rgb_as_luma(tmp_path):
    gray = radiograph(1, (200, 150))
    p_l = save(gray, tmp_path / "l.png")
    p_rgb = save(gray.convert("RGB"), tmp_path / "rgb.png")
    a, b = C.decode_image(p_l, 48), C.decode_image(p_rgb, 48)
    assert a.shape == (48, 48) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1  # gray stored as RGB decodes to the same picture


def test_decode_16bit_uses_its_range_instead_of_clipping(tmp_path):
    ramp = np.linspace(0, 4095, 64 * 48).reshape(48, 64).astype(np.uint16)
    path = save(Image.fromarray(ramp), tmp_path / "x16.png")
    with Image.open(path) as img:
        assert img.mode.startswith("I")
    out = C.decode_image(path, 32)
    assert out.min() <= 2 and out.max() >= 253
    assert (out == 255).mean() < 0.05  # convert('L') would have clipped nearly everything to 255
    assert np.all(np.diff(out.astype(int), axis=0) >= 0)  # the ramp's order survives


def test_pad_keeps_aspect_ratio_with_black_bars(tmp_path):
    wide = save(Image.new("L", (200, 100), 255), tmp_path / "wide.png")
    tall = save(Image.new("L", (50, 100), 255), tmp_path / "tall.png")
    w = C.decode_image(wide, 32, "pad")
    assert (w[:8] == 0).all() and (w[24:] == 0).all() and (w[9:23] == 255).all()
    t = C.decode_image(tall, 32, "pad")
    assert (t[:, :8] == 0).all() and (t[:, 24:] == 0).all() and (t[:, 9:23] == 255).all()
    s = C.decode_image(wide, 32, "stretch")
    assert (s == 255).all()


def test_draft_decode_agrees_with_full_decode_and_resize(tmp_path):
    # 800x640 JPEG to 64 px: draft decodes at 1/4 scale (200x160) before the final resize.
    img = radiograph(7, (800, 640))
    path = save(img, tmp_path / "big.jpeg", quality=90)
    fast = C.decode_image(path, 64).astype(float)
    with Image.open(path) as full:
        ref = np.asarray(full.convert("L").resize((64, 64), Image.Resampling.BILINEAR), dtype=float)
    diff = np.abs(fast - ref)
    assert diff.mean() < 1.0 and np.percentile(diff, 99) < 5, (diff.mean(), diff.max())
    with Image.open(path) as probe:
        probe.draft("L", (C._DRAFT_OVERSAMPLE * 64,) * 2)
        assert probe.size[0] < 800  # the reduced-scale path really is taken


def test_decode_image_rejects_unknown_resize(tmp_path):
    path = save(radiograph(0), tmp_path / "a.png")
    with pytest.raises(ValueError, match="stretch.*pad.*'crop'"):
        C.decode_image(path, 32, "crop")


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


def test_cache_round_trip(built):
    raw, manifest_path, out, info = built
    manifest = M.read_manifest(manifest_path)
    assert info == C.load_info(out)
    assert info["cache_size"] == 32 and info["resize"] == "stretch" and info["classes"] == ["NORMAL", "PNEUMONIA"]
    # The manifest's bytes and how they were decoded: another cache_size is another data version.
    expected = manifest_path.read_bytes() + b"|cache_size=32|resize=stretch"
    assert info["data_version"] == hashlib.sha256(expected).hexdigest()[:12]
    for s in M.SPLITS:
        rows = manifest[manifest["split"] == s]
        cs = C.load_split(out, s)
        assert len(cs) == len(rows) == info["counts"][s]["total"]
        assert info["counts"][s]["NORMAL"] == int((rows["label"] == "NORMAL").sum())
        assert cs.images.shape == (len(rows), 32, 32) and cs.images.dtype == np.uint8
        assert cs.labels.dtype == np.int64
        assert cs.paths == rows["path"].tolist() and cs.patient_ids == rows["patient_id"].tolist()
        np.testing.assert_array_equal(cs.labels, (rows["label"] == "PNEUMONIA").astype(int).to_numpy())
        table = pd.read_csv(out / f"{s}.csv", dtype=str, keep_default_na=False)
        assert table.columns.tolist() == ["path", "label", "patient_id"] and table["path"].tolist() == cs.paths
        for i, p in enumerate(cs.paths):
            np.testing.assert_array_equal(cs.images[i], C.decode_image(raw / p, 32, "stretch"))
    assert len(C.load_split(out, "train")) > 0 and len(C.load_split(out, "val")) > 0
    assert len(C.load_split(out, "test")) == 0  # empty split: files exist, N = 0


def test_cached_images_are_read_only_memmaps(built):
    cs = C.load_split(built[2], "train")
    assert isinstance(cs.images, np.memmap)
    with pytest.raises(ValueError, match="read-only"):
        cs.images[0, 0, 0] = 1


def test_dataframe_input_gives_same_cache_and_version(built, tmp_path):
    raw, manifest_path, out, info = built
    other = tmp_path / "cache2"
    info2 = C.build_cache(
        M.read_manifest(manifest_path), raw, other, PreprocessConfig(cache_size=32, workers=1), progress=False
    )
    assert info2 == info
    np.testing.assert_array_equal(np.load(other / "train_images.npy"), np.load(out / "train_images.npy"))


def test_pad_cache_and_parallel_decode_match_serial(tmp_path):
    raw = make_raw(tmp_path / "raw", n_normal=14, n_pneu=20)  # >= 64 images: imap_progress uses a pool
    res = M.build_manifest(raw, SplitConfig(workers=1), progress=False)
    cfg = PreprocessConfig(cache_size=24, resize="pad", workers=1)
    C.build_cache(res.manifest, raw, tmp_path / "serial", cfg, progress=False)
    info = C.build_cache(res.manifest, raw, tmp_path / "pool", cfg, progress=False, workers=2)
    assert info["resize"] == "pad"
    for s in M.SPLITS:
        a, b = C.load_split(tmp_path / "serial", s), C.load_split(tmp_path / "pool", s)
        np.testing.assert_array_equal(a.images, b.images)
    # Every NORMAL image is wider than tall, so its padded version has black top and bottom rows.
    train = C.load_split(tmp_path / "pool", "train")
    wide = [i for i, p in enumerate(train.paths) if "/NORMAL/IM-00" in p]
    assert wide and all((train.images[i][0] == 0).all() and (train.images[i][-1] == 0).all() for i in wide)


def test_full_disk_fails_before_decoding_with_the_size(built, tmp_path, monkeypatch):
    import errno
    import os

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    raw, manifest_path, _, _ = built
    out = tmp_path / "cache_full"
    expected = r"not enough disk space for the image cache: .*train_images.npy needs [\d.]+ MiB"
    with pytest.raises(OSError, match=expected):
        C.build_cache(manifest_path, raw, out, PreprocessConfig(cache_size=32, workers=1), progress=False)
    assert not (out / "info.json").exists()


def test_a_failing_image_in_a_worker_stops_the_pool_with_the_fix(tmp_path):
    raw = make_raw(tmp_path / "raw", n_normal=14, n_pneu=20)  # >= 64 images: imap_progress uses a pool
    res = M.build_manifest(raw, SplitConfig(workers=1), progress=False)
    (raw / res.manifest["path"].iloc[-1]).write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(RuntimeError, match=r"cannot decode .*dvc repro split preprocess"):
        C.build_cache(res.manifest, raw, tmp_path / "c", PreprocessConfig(cache_size=24), progress=False, workers=2)
    assert not (tmp_path / "c" / "info.json").exists()


def test_missing_or_incomplete_cache_says_how_to_build_it(built, tmp_path):
    with pytest.raises(C.CacheError, match="not found.*dvc repro preprocess"):
        C.load_split(tmp_path / "nowhere", "train")
    out = built[2]
    (out / "val_labels.npy").unlink()
    with pytest.raises(C.CacheError, match=r"val_labels.npy.*dvc repro preprocess"):
        C.load_split(out, "val")
    (out / "info.json").unlink()
    with pytest.raises(C.CacheError, match="incomplete.*dvc repro preprocess"):
        C.load_info(out)
    with pytest.raises(ValueError, match="'validation'"):
        C.load_split(out, "validation")


def test_file_changed_after_split_names_the_fix(built, tmp_path):
    raw, manifest_path, _, _ = built
    victim = M.read_manifest(manifest_path)["path"].iloc[0]
    (raw / victim).write_bytes(b"")
    out = tmp_path / "cache3"
    with pytest.raises(RuntimeError, match=r"cannot decode .*dvc repro split preprocess"):
        C.build_cache(manifest_path, raw, out, PreprocessConfig(cache_size=32, workers=1), progress=False)
    with pytest.raises(C.CacheError):  # a half-built cache is never mistaken for a complete one
        C.load_info(out)


def test_preprocess_stage(built, tmp_path, capsys):
    raw, manifest_path, _, _ = built
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"preprocess": {"cache_size": 20, "resize": "pad", "workers": 1}}))
    stage = runpy.run_path(str(REPO / "src" / "preprocess.py"), run_name="preprocess_stage")
    out = tmp_path / "stage_cache"
    rc = stage["main"](
        [
            "--params",
            str(params),
            "--raw",
            str(raw),
            "--manifest",
            str(manifest_path),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    info = json.loads((out / "info.json").read_text())
    assert (info["cache_size"], info["resize"]) == (20, "pad")
    assert C.load_split(out, "train").images.shape[1:] == (20, 20)
    assert "images/s" in capsys.readouterr().out
    proc = run_stage_script(
        "preprocess",
        "--params",
        str(params),
        "--raw",
        str(raw),
        "--manifest",
        str(tmp_path / "none.csv"),
        "--out",
        str(out),
    )
    assert proc.returncode == 1 and "preprocess: error:" in proc.stderr and "dvc repro split" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_synthetic_tree_split_then_cache(synthetic_raw, tmp_path):
    res = M.build_manifest(synthetic_raw, SplitConfig(workers=1), progress=False)
    info = C.build_cache(
        res.manifest, synthetic_raw, tmp_path / "cache", PreprocessConfig(cache_size=32, workers=1), progress=False
    )
    for s in M.SPLITS:
        assert info["counts"][s] == res.metrics["images"][s]
        cs = C.load_split(tmp_path / "cache", s)
        assert set(cs.labels.tolist()) == {0, 1} and cs.images.shape == (len(cs), 32, 32)
