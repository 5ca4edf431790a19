"""Hostile and broken archives (data.source=path with a .zip / .tar / .tar.gz): one test per case.

    PYTHONPATH=src .venv/bin/python -m pytest tests/hostile/test_hostile_archives.py -q

Still holding, tested in tests/data/test_sources.py: zip-slip and absolute paths
(test_zip_slip_is_refused), symlink members (test_zip_symlink_member_is_refused), symlink,
hardlink, FIFO and '..' tar members (test_tar_unsafe_members_are_refused), not an archive at all
(test_not_an_archive).
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile

import pytest
from hostile_kit import kaggle_tree, xray_jpeg

from cxr.config import ArchiveLimits, DataConfig, SplitConfig
from cxr.data import manifest as M
from cxr.data.archives import extract_archive
from cxr.data.sources import SourceError, fetch

pytestmark = pytest.mark.timeout(60)


def _fetch(archive, out, **limits):
    cfg = DataConfig(source="path", path=str(archive), archive=ArchiveLimits(**limits))
    return fetch(cfg, out, progress=False)


def _tar_bytes(members: list[tuple[str, bytes]], encoding: str = "utf-8") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding=encoding) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _dataset_members(n: int = 4) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        out.append((f"chest_xray/train/NORMAL/IM-{i:04d}-0001.jpeg", xray_jpeg(i)))
        out.append((f"chest_xray/train/PNEUMONIA/person{100 + i}_virus_{i}.jpeg", xray_jpeg(100 + i)))
    return out


# ---- decompression bombs ----------------------------------------------------------------------------


def test_zip_bomb_is_refused_by_compression_ratio_before_writing(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("chest_xray/train/NORMAL/IM-0001-0001.jpeg", xray_jpeg(1))
        zf.writestr("chest_xray/train/NORMAL/IM-0002-0001.jpeg", b"\0" * (8 << 20))  # 8 MiB -> ~8 KiB
    dest = tmp_path / "x"
    with pytest.raises(SourceError) as err:
        extract_archive(archive, dest)
    assert "decompression bomb" in str(err.value) and "max_ratio" in str(err.value)
    assert not any(p.is_file() for p in dest.rglob("*"))  # refused from the declared sizes: nothing written


def test_zip_member_over_the_per_member_limit_is_refused(tmp_path):
    archive = tmp_path / "big.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("chest_xray/train/NORMAL/IM-0001-0001.jpeg", b"x" * 5000)
    with pytest.raises(SourceError, match="max_member_bytes"):
        extract_archive(archive, tmp_path / "x", limits=ArchiveLimits(max_member_bytes=4000))


def test_tar_gz_bomb_is_refused_while_streaming(tmp_path):
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(gzip.compress(_tar_bytes(_dataset_members(1) + [("chest_xray/z.bin", b"\0" * (8 << 20))])))
    with pytest.raises(SourceError) as err:
        _fetch(archive, tmp_path / "raw")
    assert "max_ratio" in str(err.value) and "chest_xray/z.bin" in str(err.value)


def test_archive_over_the_total_limit_is_refused(tmp_path):
    archive = tmp_path / "a.tar"
    archive.write_bytes(_tar_bytes(_dataset_members(4)))
    with pytest.raises(SourceError, match="max_total_bytes"):
        _fetch(archive, tmp_path / "raw", max_total_bytes=3000)


# ---- damaged archives: a message, not a traceback ---------------------------------------------------


def _zip_of_tree(tmp_path) -> bytes:
    top = kaggle_tree(tmp_path / "src")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(top.rglob("*.jpeg")):
            zf.write(p, p.relative_to(top.parent).as_posix())
    return buf.getvalue()


def test_zip_with_a_bad_crc_is_a_message(tmp_path):
    data = bytearray(_zip_of_tree(tmp_path))
    first = zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[0]
    start = first.header_offset + 30 + len(first.filename)  # stored: the member's bytes follow its header
    data[start + 200] ^= 0xFF
    archive = tmp_path / "crc.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(SourceError) as err:
        _fetch(archive, tmp_path / "raw")
    assert "cannot read archive" in str(err.value) and first.filename in str(err.value)
    assert "CRC" in str(err.value) and "download it again" in str(err.value)


def test_encrypted_zip_is_a_message(tmp_path):
    data = bytearray(_zip_of_tree(tmp_path))
    # Set the 'encrypted' flag (bit 0 of the general-purpose flags) in every local and central header.
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = data.find(sig)
        while i != -1:
            data[i + off] |= 0x01
            i = data.find(sig, i + 4)
    archive = tmp_path / "enc.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(SourceError) as err:
        _fetch(archive, tmp_path / "raw")
    assert "encrypted" in str(err.value) and "password" in str(err.value)


def test_tar_cut_at_a_member_boundary_is_detected(tmp_path):
    members = _dataset_members(4)
    whole = _tar_bytes(members)
    # Cut right after the 5th member's data: a valid-looking tar with no end-of-archive blocks.
    cut = _tar_bytes(members[:5]).rstrip(b"\0")  # a JPEG ends in FF D9: only padding and end blocks go
    cut += b"\0" * ((-len(cut)) % 512)
    assert len(cut) < len(whole) and tarfile.open(fileobj=io.BytesIO(cut)).getnames()  # tarfile reads it silently
    archive = tmp_path / "cut.tar"
    archive.write_bytes(cut)
    with pytest.raises(SourceError) as err:
        _fetch(archive, tmp_path / "raw")
    assert "end-of-archive" in str(err.value) and "cut short" in str(err.value)


def test_complete_gz_of_a_cut_tar_is_detected(tmp_path):
    cut = _tar_bytes(_dataset_members(4)[:5]).rstrip(b"\0")
    cut += b"\0" * ((-len(cut)) % 512)
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(gzip.compress(cut))  # the gzip stream itself is complete
    with pytest.raises(SourceError, match="end-of-archive"):
        _fetch(archive, tmp_path / "raw")


def test_truncated_tar_gz_still_stops_with_a_message(tmp_path):
    data = gzip.compress(_tar_bytes(_dataset_members(4)))
    archive = tmp_path / "trunc.tar.gz"
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="truncated or corrupt"):
        _fetch(archive, tmp_path / "raw")


def test_tar_member_with_a_latin1_name_is_imported_and_split(tmp_path):
    members = _dataset_members(4) + [("chest_xray/train/NORMAL/IM-0900-caf\xe9.jpeg", xray_jpeg(900))]
    archive = tmp_path / "latin1.tar"
    archive.write_bytes(_tar_bytes(members, encoding="latin-1"))  # the name's bytes are not UTF-8
    out = tmp_path / "raw"
    report = _fetch(archive, out)
    assert (out / "train" / "NORMAL" / "IM-0900-caf\xe9.jpeg").is_file()
    assert any("latin-1" in n for n in report.notes)
    res = M.build_manifest(out, SplitConfig(workers=1, val_fraction=0.25, test_fraction=0.25), progress=False)
    M.write_manifest(res.manifest, tmp_path / "manifest.csv")  # was: UnicodeEncodeError
    assert "train/NORMAL/IM-0900-caf\xe9.jpeg" in (tmp_path / "manifest.csv").read_text(encoding="utf-8")


def test_a_complete_tar_still_imports_everything(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(gzip.compress(_tar_bytes(_dataset_members(4))))
    report = _fetch(archive, tmp_path / "raw")
    assert report.counts["train"] == {"NORMAL": 4, "PNEUMONIA": 4}
