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
import warnings
import zipfile

import pytest
from hostile_kit import kaggle_tree, xray_jpeg

from cxr.data import manifest as M
from cxr.data.archives import extract_archive
from cxr.data.config import ArchiveLimits, DataConfig, SplitConfig
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


# ---- round two: duplicate members, separators, names the filesystem refuses -----------------------


def _zip(path, members: list[tuple[str, bytes]]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate name: that is the case
        with zipfile.ZipFile(path, "w") as zf:
            for name, data in members:
                zf.writestr(zipfile.ZipInfo(name), data)
    return path


def _duplicate_rows(out):
    return [r for r in M.read_skipped(out) if r["reason"] == "duplicate_member"]


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_duplicate_member_name_is_kept_once_and_the_other_reported(tmp_path, kind):
    members = _dataset_members(9)  # 18 images
    dup = members[0][0]
    members.append((dup, xray_jpeg(999)))  # the same path again, other bytes
    archive = tmp_path / f"data.{kind}"
    if kind == "zip":
        _zip(archive, members)
    else:
        archive.write_bytes(gzip.compress(_tar_bytes(members)))
    out = tmp_path / "raw"
    report = _fetch(archive, out)
    assert report.total == 18  # the first kept (the second used to overwrite it: 17 of 18 landed)
    assert (out / "train" / "NORMAL" / "IM-0000-0001.jpeg").read_bytes() == members[0][1]
    rows = _duplicate_rows(out)
    assert [r["path"] for r in rows] == ["train/NORMAL/IM-0000-0001.jpeg"] and "first, kept" in rows[0]["detail"]
    q = M.build_manifest(out, SplitConfig(workers=1), progress=False).quarantine
    assert "duplicate_member" in set(q["reason"])  # counted in split's quarantine report


def test_backslash_and_slash_spellings_of_one_member_are_one_path_in_zip_and_tar(tmp_path):
    members = _dataset_members(4)
    win = [(n.replace("/", "\\"), d) for n, d in members]  # as Windows tools write member names
    for kind in ("zip", "tar"):
        archive = tmp_path / f"win.{kind}"
        if kind == "zip":
            _zip(archive, win)
        else:
            archive.write_bytes(_tar_bytes(win))
        out = tmp_path / f"raw-{kind}"
        assert _fetch(archive, out).total == 8  # tar used to keep one file named 'chest_xray\\train\\...'
    trees = [
        sorted(p.relative_to(tmp_path / f"raw-{k}").as_posix() for p in (tmp_path / f"raw-{k}").rglob("*.jpeg"))
        for k in ("zip", "tar")
    ]
    assert trees[0] == trees[1] and "train/NORMAL/IM-0000-0001.jpeg" in trees[0]
    mixed = tmp_path / "mixed.zip"
    _zip(mixed, [*members, (members[1][0].replace("/", "\\"), xray_jpeg(555))])
    _fetch(mixed, tmp_path / "raw-mixed")
    assert [r["path"] for r in _duplicate_rows(tmp_path / "raw-mixed")] == ["train/PNEUMONIA/person100_virus_0.jpeg"]


def test_a_file_and_a_folder_of_one_name_in_a_zip_is_one_line_naming_the_archive(tmp_path):
    base = "chest_xray/train/NORMAL/sub"
    archive = _zip(tmp_path / "clash.zip", [*_dataset_members(2), (base, b"x"), (f"{base}/IM-0050-0001.jpeg", b"y")])
    with pytest.raises(SourceError) as err:  # used to: FileExistsError with a traceback
        _fetch(archive, tmp_path / "raw")
    msg = str(err.value)
    assert str(archive) in msg and "a file and a folder of the same name" in msg and "\n" not in msg


def test_a_member_name_longer_than_the_filesystem_allows_is_one_line(tmp_path):
    long = "IM-0001-" + "x" * 300 + ".jpeg"
    archive = _zip(tmp_path / "long.zip", [*_dataset_members(2), (f"chest_xray/train/NORMAL/{long}", xray_jpeg(5))])
    with pytest.raises(SourceError) as err:  # used to: OSError [Errno 36] File name too long
        _fetch(archive, tmp_path / "raw")
    assert "313 bytes long" in str(err.value) and "allows 255" in str(err.value) and str(archive) in str(err.value)


def test_an_archive_without_a_dataset_is_named_not_its_deleted_extraction_folder(tmp_path):
    archive = _zip(tmp_path / "photos.zip", [("holiday/beach.jpeg", xray_jpeg(1))])
    with pytest.raises(SourceError) as err:
        _fetch(archive, tmp_path / "raw")
    assert str(archive) in str(err.value) and ".raw-extract-" not in str(err.value)
