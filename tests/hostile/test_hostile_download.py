"""Hostile and broken servers (data.source=url), each against a server the test starts on 127.0.0.1.

    PYTHONPATH=src .venv/bin/python -m pytest tests/hostile/test_hostile_download.py -q

Still holding, tested in tests/data/test_sources.py: HTTP 404 (test_url_http_error_is_clear),
resume of a dropped download with and without Range support (test_url_resumes_a_partial_download),
sha256 mismatch (test_url_sha256_mismatch_names_both_hashes_and_deletes_file).
"""

from __future__ import annotations

import hashlib
import io
import time
import zipfile

import pytest
from hostile_kit import ENDLESS_STOP, kaggle_tree

from cxr.data.config import DataConfig
from cxr.data.download import download, download_target
from cxr.data.sources import SourceError, fetch

pytestmark = pytest.mark.timeout(60)


def _zip(tmp_path, seed0=0) -> bytes:
    top = kaggle_tree(tmp_path / f"src{seed0}", seed0=seed0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(top.rglob("*.jpeg")):
            zf.write(p, p.relative_to(top.parent).as_posix())
    return buf.getvalue()


def test_changed_url_with_the_same_file_name_is_downloaded_anew(tmp_path, http_server):
    old, new = _zip(tmp_path, 0), _zip(tmp_path, 50)
    base, log = http_server({"/v1/chest_xray.zip": (old, "ok"), "/v2/chest_xray.zip": (new, "ok")})
    a = download(f"{base}/v1/chest_xray.zip", tmp_path / "dl", progress=False)
    b = download(f"{base}/v2/chest_xray.zip", tmp_path / "dl", progress=False)
    assert a != b and a.read_bytes() == old and b.read_bytes() == new
    assert [p for p, _ in log] == ["/v1/chest_xray.zip", "/v2/chest_xray.zip"]  # the server was asked
    notes: list[str] = []
    assert download(f"{base}/v2/chest_xray.zip", tmp_path / "dl", progress=False, notes=notes) == b
    assert len(log) == 2 and "reusing" in notes[0]  # the same URL is reused


def test_a_new_sha256_for_the_same_url_is_not_satisfied_by_the_old_file(tmp_path, http_server):
    data = _zip(tmp_path)
    base, _ = http_server({"/d.zip": (data, "ok")})
    download(f"{base}/d.zip", tmp_path / "dl", progress=False)
    good = hashlib.sha256(data).hexdigest()
    assert download_target(f"{base}/d.zip", tmp_path / "dl", good) != download_target(f"{base}/d.zip", tmp_path / "dl")
    notes: list[str] = []
    download(f"{base}/d.zip", tmp_path / "dl", sha256=good, progress=False, notes=notes)
    assert "sha256 verified" in notes


def test_body_without_content_length_that_drops_is_never_promoted(tmp_path, http_server):
    data = _zip(tmp_path)
    base, log = http_server({"/d.zip": (data, "no_length_drop")})
    with pytest.raises(SourceError) as err:
        download(f"{base}/d.zip", tmp_path / "dl", progress=False)
    assert "without a Content-Length" in str(err.value) and "not a complete zip or tar" in str(err.value)
    target = download_target(f"{base}/d.zip", tmp_path / "dl")
    assert not target.exists() and target.with_name("d.zip.part").exists()  # kept for resumption only
    with pytest.raises(SourceError):  # and never reused as if complete
        download(f"{base}/d.zip", tmp_path / "dl", progress=False)
    assert len(log) == 2


@pytest.mark.timeout(30)
def test_a_server_trickling_one_byte_at_a_time_is_abandoned(tmp_path, http_server):
    base, _ = http_server({"/d.zip": (b"x" * 10_000, "trickle")}, trickle_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(SourceError) as err:
        download(f"{base}/d.zip", tmp_path / "dl", progress=False, timeout=1.0, min_rate=100)
    assert time.monotonic() - t0 < 10  # not 10,000 x 0.3 s
    assert "data.min_rate" in str(err.value) and "resume" in str(err.value)


def test_an_html_page_saved_as_zip_is_a_message(tmp_path, http_server):
    base, _ = http_server({"/d.zip": (b"<!doctype html><html><body>Please log in</body></html>", "ok")})
    cfg = DataConfig(source="url", url=f"{base}/d.zip", download_dir="dl")
    with pytest.raises(SourceError, match="HTML error page"):
        fetch(cfg, tmp_path / "raw", base_dir=tmp_path, progress=False)


def _capped(base: str, path: str, cap: int) -> DataConfig:
    return DataConfig(source="url", url=base + path, download_dir="dl", archive={"max_total_bytes": cap})


def test_a_server_streaming_without_end_is_cut_at_the_archive_cap_and_its_part_deleted(tmp_path, http_server):
    base, _ = http_server({"/d.zip": (b"\0" * 65536, "endless")})
    with pytest.raises(SourceError) as err:  # used to write *.part until the server stopped (or the disk filled)
        fetch(_capped(base, "/d.zip", 1 << 20), tmp_path / "raw", base_dir=tmp_path, progress=False)
    message = str(err.value)
    assert "stopped after 1,048,576 bytes" in message and "data.archive.max_total_bytes" in message
    assert "\n" not in message and ENDLESS_STOP > 1 << 20
    assert not list((tmp_path / "dl").rglob("*.part"))


def test_a_download_announcing_more_than_the_cap_is_refused_before_its_body(tmp_path, http_server):
    base, _ = http_server({"/d.zip": (_zip(tmp_path), "ok")})
    with pytest.raises(SourceError) as err:
        fetch(_capped(base, "/d.zip", 1000), tmp_path / "raw", base_dir=tmp_path, progress=False)
    assert "announces" in str(err.value) and "over data.archive.max_total_bytes = 1,000" in str(err.value)
    assert not list((tmp_path / "dl").rglob("*.part"))
