"""Dataset intake: every source into the canonical tree, safe extraction, downloads, the stage script.

    .venv/bin/pytest tests/data/test_sources.py -q

The url tests serve archives from an http.server on 127.0.0.1 in a thread; nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import stat
import tarfile
import threading
import zipfile
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cxr.data.archives import extract_archive
from cxr.data.config import DataConfig, SyntheticConfig
from cxr.data.download import download, download_target
from cxr.data.layout import find_layout
from cxr.data.sources import SourceError, fetch
from pipeline_repo import run_stage_script

SIX = [(s, c) for s in ("train", "val", "test") for c in ("NORMAL", "PNEUMONIA")]


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (20 + seed % 7, 16), color=seed % 256).save(buf, format="JPEG")
    return buf.getvalue()


def _put(path: Path, data: bytes = b"") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _counts(out: Path) -> dict[tuple[str, str], int]:
    return {(s, c): sum(1 for p in (out / s / c).rglob("*") if p.is_file()) for s, c in SIX}


def make_messy_copy(root: Path) -> dict[tuple[str, str], int]:
    """A Kaggle-like copy with the quirks of the real one; returns the expected counts.

    Outer tree chest_xray/{TRAIN,test}/{normal,Pneumonia} (no val/), a nested duplicate
    chest_xray/chest_xray/ holding only part of it, __MACOSX/, .DS_Store, ._ AppleDouble files.
    """
    top = root / "chest_xray"
    n = 0
    plan = {("TRAIN", "normal"): 3, ("TRAIN", "Pneumonia"): 5, ("test", "NORMAL"): 2, ("test", "pneumonia"): 2}
    for (split, label), k in plan.items():
        for _ in range(k):
            name = f"IM-{n:04d}-0001.jpeg" if label.lower() == "normal" else f"person{n}_bacteria_{n}.jpeg"
            _put(top / split / label / name, _jpeg(n))
            n += 1
        _put(top / split / label / ".DS_Store", b"junk")
        _put(top / split / label / f"._{name}", b"appledouble")
    _put(top / "TRAIN" / "normal" / "Thumbs.db", b"junk")
    _put(top / "TRAIN" / "Pneumonia" / "broken.jpeg", b"not a jpeg")  # copied: split decides
    # The nested duplicate: same layout, fewer files, must not be taken too.
    _put(top / "chest_xray" / "train" / "NORMAL" / "IM-0000-0001.jpeg", _jpeg(0))
    _put(top / "chest_xray" / "train" / "PNEUMONIA" / "person3_bacteria_3.jpeg", _jpeg(3))
    _put(root / "__MACOSX" / "chest_xray" / "TRAIN" / "normal" / "._IM-0000-0001.jpeg", b"mac")
    _put(root / ".DS_Store", b"junk")
    return {
        ("train", "NORMAL"): 3,
        ("train", "PNEUMONIA"): 6,
        ("val", "NORMAL"): 0,
        ("val", "PNEUMONIA"): 0,
        ("test", "NORMAL"): 2,
        ("test", "PNEUMONIA"): 2,
    }


def _assert_no_junk(out: Path) -> None:
    names = [p.name for p in out.rglob("*")]
    assert not [n for n in names if n.startswith("._") or n in (".DS_Store", "Thumbs.db", "__MACOSX")]


# --------------------------------------------------------------------------------------------
# synthetic and path (folder)
# --------------------------------------------------------------------------------------------


def test_synthetic_source_replaces_out_dir(tmp_path):
    out = tmp_path / "raw"
    _put(out / "stale" / "old.jpeg", b"x")
    cfg = DataConfig(source="synthetic", synthetic=SyntheticConfig(patients=8, min_size=32, max_size=48))
    report = fetch(cfg, out, progress=False)
    assert not (out / "stale").exists()
    assert {k: v for k, v in _counts(out).items()} == {(s, c): report.counts[s][c] for s, c in SIX}
    assert report.total == sum(_counts(out).values()) > 0


def test_path_folder_with_messy_kaggle_layout(tmp_path):
    expected = make_messy_copy(tmp_path / "src")
    out = tmp_path / "raw"
    report = fetch(DataConfig(source="path", path=str(tmp_path / "src")), out, progress=False)
    assert _counts(out) == expected
    assert {(s, c): report.counts[s][c] for s, c in SIX} == expected
    assert all((out / s / c).is_dir() for s, c in SIX)
    assert (out / "train" / "PNEUMONIA" / "broken.jpeg").read_bytes() == b"not a jpeg"
    _assert_no_junk(out)
    assert any("no val folder" in n for n in report.notes)
    assert any("chest_xray/chest_xray: not taken" in n for n in report.notes)


def test_path_folder_hardlinks_on_one_filesystem_and_copies_when_told(tmp_path):
    make_messy_copy(tmp_path / "src")
    src_file = tmp_path / "src" / "chest_xray" / "test" / "NORMAL" / "IM-0008-0001.jpeg"
    fetch(DataConfig(source="path", path="src"), tmp_path / "raw", base_dir=tmp_path, progress=False)
    linked = tmp_path / "raw" / "test" / "NORMAL" / "IM-0008-0001.jpeg"
    assert linked.stat().st_ino == src_file.stat().st_ino
    fetch(DataConfig(source="path", path="src", link=False), tmp_path / "raw", base_dir=tmp_path, progress=False)
    assert linked.stat().st_ino != src_file.stat().st_ino
    assert linked.read_bytes() == src_file.read_bytes()


def test_mendeley_layout_next_to_oct_data(tmp_path):
    """The Mendeley archive also holds OCT images in train/{CNV,DME,DRUSEN,NORMAL}: not ours."""
    root = tmp_path / "ZhangLabData" / "CellData"
    _put(root / "OCT" / "train" / "NORMAL" / "NORMAL-1-1.jpeg", _jpeg(1))
    _put(root / "OCT" / "train" / "CNV" / "CNV-1-1.jpeg", _jpeg(2))
    _put(root / "chest_xray" / "train" / "NORMAL" / "IM-0001-0001.jpeg", _jpeg(3))
    _put(root / "chest_xray" / "train" / "PNEUMONIA" / "person1_virus_1.jpeg", _jpeg(4))
    _put(root / "chest_xray" / "test" / "PNEUMONIA" / "person1_virus_2.jpeg", _jpeg(5))
    layout = find_layout(tmp_path)
    assert layout.root == root / "chest_xray"
    assert set(layout.dirs) == {"train", "test"}


def test_flat_class_folders_become_train(tmp_path):
    _put(tmp_path / "src" / "normal" / "IM-0001-0001.jpeg", _jpeg(1))
    _put(tmp_path / "src" / "PNEUMONIA" / "person1_virus_1.jpeg", _jpeg(2))
    report = fetch(DataConfig(source="path", path=str(tmp_path / "src")), tmp_path / "raw", progress=False)
    assert _counts(tmp_path / "raw") == {**{k: 0 for k in SIX}, ("train", "NORMAL"): 1, ("train", "PNEUMONIA"): 1}
    assert any("train" in n and "flat" in n for n in report.notes)


def test_unrecognised_layout_says_what_was_found_and_expected(tmp_path):
    _put(tmp_path / "src" / "images" / "cats" / "a.jpeg", _jpeg(1))
    _put(tmp_path / "src" / "readme.txt", b"hi")
    with pytest.raises(SourceError) as err:
        fetch(DataConfig(source="path", path=str(tmp_path / "src")), tmp_path / "raw", progress=False)
    msg = str(err.value)
    assert "images/ [cats]" in msg and "readme.txt" in msg
    assert "train/" in msg and "NORMAL/" in msg and "PNEUMONIA/" in msg


def test_relative_path_falls_back_to_dvc_root(tmp_path, monkeypatch):
    repo, copy = tmp_path / "repo", tmp_path / "exp-copy"
    make_messy_copy(repo / "data" / "source")
    copy.mkdir()
    cfg = DataConfig(source="path", path="data/source")
    monkeypatch.delenv("DVC_ROOT", raising=False)
    with pytest.raises(SourceError, match="not found"):
        fetch(cfg, copy / "raw", base_dir=copy, progress=False)
    monkeypatch.setenv("DVC_ROOT", str(repo))
    report = fetch(cfg, copy / "raw", base_dir=copy, progress=False)
    assert report.total == 13


def test_source_inside_output_is_refused(tmp_path):
    make_messy_copy(tmp_path / "raw" / "src")
    with pytest.raises(SourceError, match="inside the output folder"):
        fetch(DataConfig(source="path", path=str(tmp_path / "raw" / "src")), tmp_path / "raw", progress=False)
    assert (tmp_path / "raw" / "src").is_dir()  # nothing deleted


# --------------------------------------------------------------------------------------------
# archives
# --------------------------------------------------------------------------------------------


def _zip_tree(src: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar"])
def test_path_archive(tmp_path, kind):
    expected = make_messy_copy(tmp_path / "src")
    archive = tmp_path / f"chest-xray-pneumonia.{kind}"
    if kind == "zip":
        _zip_tree(tmp_path / "src", archive)
    else:
        with tarfile.open(archive, "w:gz" if kind == "tar.gz" else "w") as tf:
            tf.add(tmp_path / "src", arcname=".")
    out = tmp_path / "data" / "raw"
    fetch(DataConfig(source="path", path=str(archive)), out, progress=False)
    assert _counts(out) == expected
    _assert_no_junk(out)
    assert [p.name for p in out.parent.iterdir()] == ["raw"]  # the staging folder is gone


def _zip_with(tmp_path: Path, name: str, mode: int | None = None) -> Path:
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("chest_xray/train/NORMAL/IM-0001-0001.jpeg", _jpeg(1))
        info = zipfile.ZipInfo(name)
        if mode is not None:
            info.external_attr = mode << 16
        zf.writestr(info, b"payload")
    return archive


@pytest.mark.parametrize("member", ["../evil.jpeg", "chest_xray/../../evil.jpeg", "/tmp/evil.jpeg"])
def test_zip_slip_is_refused(tmp_path, member):
    archive = _zip_with(tmp_path, member)
    dest = tmp_path / "x" / "dest"
    with pytest.raises(SourceError, match="unsafe member") as err:
        extract_archive(archive, dest)
    assert repr(member) in str(err.value)
    assert not (tmp_path / "x" / "evil.jpeg").exists() and not (tmp_path / "evil.jpeg").exists()


def test_zip_symlink_member_is_refused(tmp_path):
    archive = _zip_with(tmp_path, "chest_xray/train/NORMAL/link.jpeg", mode=stat.S_IFLNK | 0o777)
    with pytest.raises(SourceError, match="symbolic link"):
        extract_archive(archive, tmp_path / "dest")


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "dotdot"])
def test_tar_unsafe_members_are_refused(tmp_path, kind):
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        data = _jpeg(1)
        ok = tarfile.TarInfo("chest_xray/train/NORMAL/IM-0001-0001.jpeg")
        ok.size = len(data)
        tf.addfile(ok, io.BytesIO(data))
        bad = tarfile.TarInfo("chest_xray/train/NORMAL/bad.jpeg")
        if kind == "symlink":
            bad.type, bad.linkname = tarfile.SYMTYPE, "/etc/passwd"
        elif kind == "hardlink":
            bad.type, bad.linkname = tarfile.LNKTYPE, "chest_xray/train/NORMAL/IM-0001-0001.jpeg"
        elif kind == "fifo":
            bad.type = tarfile.FIFOTYPE
        else:
            bad.name = "../../bad.jpeg"
        tf.addfile(bad)
    with pytest.raises(SourceError, match="unsafe member") as err:
        fetch(DataConfig(source="path", path=str(archive)), tmp_path / "raw", progress=False)
    assert repr(bad.name) in str(err.value)
    assert not (tmp_path / "bad.jpeg").exists()


def test_not_an_archive(tmp_path):
    (tmp_path / "data.rar").write_bytes(b"Rar!\x1a\x07\x00 not supported")
    with pytest.raises(SourceError, match="neither a folder nor a zip or tar"):
        fetch(DataConfig(source="path", path=str(tmp_path / "data.rar")), tmp_path / "raw", progress=False)


# --------------------------------------------------------------------------------------------
# url
# --------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Serves ``files`` (path -> bytes); honours Range unless ``ignore_range``."""

    def __init__(self, *args, files, log, ignore_range, **kwargs):
        self.files, self.log, self.ignore_range = files, log, ignore_range
        super().__init__(*args, **kwargs)

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.log.append((self.path, self.headers.get("Range")))
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        if rng and not self.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def serve():
    servers = []

    def start(files: dict[str, bytes], ignore_range: bool = False):
        log: list = []
        handler = partial(_Handler, files=files, log=log, ignore_range=ignore_range)
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", log

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def zipped(tmp_path) -> tuple[bytes, dict]:
    expected = make_messy_copy(tmp_path / "src")
    _zip_tree(tmp_path / "src", tmp_path / "a.zip")
    return (tmp_path / "a.zip").read_bytes(), expected


def test_url_download_extract_and_sha256(tmp_path, serve, zipped):
    data, expected = zipped
    base, log = serve({"/files/chest_xray.zip": data})
    cfg = DataConfig(
        source="url", url=f"{base}/files/chest_xray.zip", download_dir="dl", sha256=hashlib.sha256(data).hexdigest()
    )
    report = fetch(cfg, tmp_path / "raw", base_dir=tmp_path, progress=False)
    assert _counts(tmp_path / "raw") == expected
    assert download_target(cfg.url, tmp_path / "dl", cfg.sha256).read_bytes() == data
    assert "sha256 verified" in report.notes
    # A second run reuses the archive instead of downloading it again.
    fetch(cfg, tmp_path / "raw", base_dir=tmp_path, progress=False)
    assert len(log) == 1


@pytest.mark.parametrize("ignore_range", [False, True])
def test_url_resumes_a_partial_download(tmp_path, serve, zipped, ignore_range):
    data, _ = zipped
    base, log = serve({"/d.zip": data}, ignore_range=ignore_range)
    target = download_target(f"{base}/d.zip", tmp_path / "dl")
    _put(target.with_name("d.zip.part"), data[:1000])
    notes: list[str] = []
    path = download(f"{base}/d.zip", tmp_path / "dl", progress=False, notes=notes)
    assert path == target and path.read_bytes() == data  # appended or restarted: either way, the right bytes
    assert log == [("/d.zip", "bytes=1000-")]
    assert not target.with_name("d.zip.part").exists()
    if ignore_range:
        assert any("ignored the resume request" in n for n in notes)
    else:
        assert any("resumed download at byte 1000" in n for n in notes)


def test_url_a_partial_file_as_long_as_the_remote_one_starts_over(tmp_path, serve, zipped):
    """The server answers the resume with 416 (nothing left from that byte): the partial file may be another
    version of the remote file, so it is deleted and the file downloaded whole, once."""
    data, _ = zipped
    base, log = serve({"/d.zip": data})
    target = download_target(f"{base}/d.zip", tmp_path / "dl")
    _put(target.with_name("d.zip.part"), b"x" * (len(data) + 10))  # longer: the remote file changed
    path = download(f"{base}/d.zip", tmp_path / "dl", progress=False)
    assert path.read_bytes() == data and not target.with_name("d.zip.part").exists()
    assert log == [("/d.zip", f"bytes={len(data) + 10}-"), ("/d.zip", None)]


def test_url_sha256_mismatch_names_both_hashes_and_deletes_file(tmp_path, serve, zipped):
    data, _ = zipped
    base, _ = serve({"/d.zip": data})
    wrong = "0" * 64
    with pytest.raises(SourceError) as err:
        download(f"{base}/d.zip", tmp_path / "dl", sha256=wrong, progress=False)
    assert wrong in str(err.value) and hashlib.sha256(data).hexdigest() in str(err.value)
    assert not download_target(f"{base}/d.zip", tmp_path / "dl", wrong).exists()
    assert not download_target(f"{base}/d.zip", tmp_path / "dl", wrong).with_name("d.zip.part").exists()


def test_url_http_error_is_clear(tmp_path, serve):
    base, _ = serve({})
    with pytest.raises(SourceError, match="HTTP 404"):
        download(f"{base}/missing.zip", tmp_path / "dl", progress=False)


# --------------------------------------------------------------------------------------------
# kaggle
# --------------------------------------------------------------------------------------------


def test_kaggle_without_credentials_says_how_to_supply_them(tmp_path, monkeypatch):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(SourceError) as err:
        fetch(DataConfig(source="kaggle"), tmp_path / "raw", base_dir=tmp_path, progress=False)
    msg = str(err.value)
    assert "no Kaggle credentials" in msg
    assert "KAGGLE_USERNAME" in msg and "kaggle.json" in msg and "data.source=path" in msg


# --------------------------------------------------------------------------------------------
# the stage script
# --------------------------------------------------------------------------------------------


def _stage(repo_root: Path):
    spec = importlib.util.spec_from_file_location("fetch_stage", repo_root / "src" / "fetch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stage_script_prints_counts(tmp_path, repo_root, capsys, monkeypatch):
    params = {"data": {"source": "path", "path": "src"}, "lr": 0.1}  # other sections are ignored
    make_messy_copy(tmp_path / "src")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert _stage(repo_root).main(["--params", "params.yaml", "--out", "data/raw"]) == 0
    printed = capsys.readouterr().out
    assert "train" in printed and "PNEUMONIA" in printed
    assert [line.split() for line in printed.splitlines() if line.startswith("total")] == [["total", "5", "8", "13"]]


def test_stage_script_user_error_exits_nonzero_without_traceback(tmp_path, repo_root, capsys):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"source": "path", "path": str(tmp_path / "nope")}}))
    proc = run_stage_script("fetch", "--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "raw"))
    err = proc.stderr
    assert proc.returncode == 1
    assert "fetch: error:" in err and "does not exist" in err and "Traceback" not in err


@pytest.mark.shared_data
def test_real_images_folder(shared_data, tmp_path):
    """The real full-resolution sample: train/ only, names and bytes kept."""
    src = shared_data / "kermany-fullres"
    report = fetch(DataConfig(source="path", path=str(src)), tmp_path / "raw", progress=False)
    assert report.counts["train"] == {"NORMAL": 60, "PNEUMONIA": 60}
    assert report.counts["val"] == report.counts["test"] == {"NORMAL": 0, "PNEUMONIA": 0}
    some = sorted((src / "train" / "PNEUMONIA").iterdir())[0]
    assert (tmp_path / "raw" / "train" / "PNEUMONIA" / some.name).read_bytes() == some.read_bytes()


def test_output_inside_the_source_folder_is_not_mistaken_for_the_dataset(tmp_path):
    """data.path: data with out data/raw: last run's raw/ (bigger, canonical) must not be taken."""
    expected = make_messy_copy(tmp_path / "data")
    for i in range(30):
        _put(tmp_path / "data" / "raw" / "train" / "NORMAL" / f"IM-{i:04d}-0009.jpeg", _jpeg(i))
        _put(tmp_path / "data" / "raw" / "train" / "PNEUMONIA" / f"person{i}_virus_9.jpeg", _jpeg(i))
    fetch(
        DataConfig(source="path", path="data", link=False), tmp_path / "data" / "raw", base_dir=tmp_path, progress=False
    )
    assert _counts(tmp_path / "data" / "raw") == expected
