"""The hostile-input catalogue's shared builders: plausible images, source trees, a local HTTP server.

Every input is generated in tmp_path; HTTP cases talk to a server started here on 127.0.0.1; the
permission cases run the intake as user nobody (:func:`run_unprivileged`).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def xray_jpeg(seed: int, size=(64, 48)) -> bytes:
    """A small radiograph-plausible JPEG, unique per seed (smooth gradient + a little noise)."""
    rng = np.random.default_rng(seed)
    w, h = size
    gray = np.add.outer(np.linspace(30, 140, h), np.linspace(0, 90, w)) + rng.integers(0, 10, (h, w))
    buf = io.BytesIO()
    Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), mode="L").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def put(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def kaggle_tree(root: Path, n_normal: int = 4, n_pneu: int = 4, test: bool = True, seed0: int = 0) -> Path:
    """chest_xray/{train,test}/{NORMAL,PNEUMONIA}/ with one image per patient; returns the chest_xray folder."""
    top = root / "chest_xray"
    seed = seed0
    for split in ("train", "test") if test else ("train",):
        for _ in range(n_normal):
            put(top / split / "NORMAL" / f"IM-{seed:04d}-0001.jpeg", xray_jpeg(seed))
            seed += 1
        for _ in range(n_pneu):
            put(top / split / "PNEUMONIA" / f"person{seed}_bacteria_{seed}.jpeg", xray_jpeg(seed))
            seed += 1
    return top


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


ENDLESS_STOP = 64 << 20


class _Handler(BaseHTTPRequestHandler):
    """``routes``: path -> (bytes, mode); mode 'ok' | 'no_length_drop' (no Content-Length, closes half-way)
    | 'trickle' (one byte every ``trickle_s``) | 'endless' (no Content-Length, the bytes again and again:
    stops at ENDLESS_STOP bytes, so that a client without a cap fails the test instead of filling the disk)."""

    routes: dict = {}
    log: list = []
    trickle_s = 0.5

    def do_GET(self):  # noqa: N802
        self.log.append((self.path, self.headers.get("Range")))
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        data, mode = route
        if mode == "endless":
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(ENDLESS_STOP // len(data)):
                    self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True
            return
        if mode == "no_length_drop":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if mode == "trickle":
            try:
                for b in data:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    time.sleep(self.trickle_s)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    """start(routes) -> (base url, request log); the server runs in a thread and stops after the test."""
    servers = []

    def start(routes: dict, trickle_s: float = 0.5):
        handler = type("H", (_Handler,), {"routes": routes, "log": [], "trickle_s": trickle_s})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}", handler.log

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


NOBODY = 65534  # the unprivileged user the permission cases run the intake as


def unprivileged_dir() -> Path:
    """A fresh folder under /tmp that user nobody can enter and write (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="cxr-hostile-", dir="/tmp"))
    os.chmod(path, 0o777)
    return path


def run_unprivileged(code: str) -> subprocess.CompletedProcess:
    """``code`` in a Python subprocess as user nobody, with src/ on its path: permission bits mean nothing
    to root, so a folder without x bit is only unreadable to another user. Skips, saying why, where this
    process cannot switch user (it is not root, or setpriv is missing)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip(f"running the intake as another user needs root and setpriv (uid {os.geteuid()})")
    src = Path(__file__).resolve().parents[2] / "src"
    cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", sys.executable, "-c", code]
    env = {**os.environ, "PYTHONPATH": str(src), "HOME": "/tmp"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, cwd="/tmp")
