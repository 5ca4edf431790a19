"""Real MLflow servers on 127.0.0.1 for the tests: ``mlflow server`` and ``mlflow models serve``.

with mlflow_process(["server", "--backend-store-uri", uri], cwd=root, env=env, log=root / "server.log") as url:
    urllib.request.urlopen(f"{url}/health")
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from cxr.team.stack import answers
from pipeline_repo import BIN, stop_group


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A request that reads the tracking store: ``/health`` answers before the server's worker has opened its
# store, and that first open (an sqlite engine and its schema check) can outlast a client's 5-s timeout
# on a loaded machine.
STORE_READY = "/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default"


@contextlib.contextmanager
def mlflow_process(
    args: list[str], *, cwd: Path, env: dict, log: Path, ready: str = STORE_READY, timeout: float = 120
) -> Iterator[str]:
    """``mlflow <args> --host 127.0.0.1 --port <free> --workers 1`` (:func:`server_process`): its base URL once
    GET ``ready`` answers 200 (for ``mlflow server``, once its store answers)."""
    port = free_port()
    cmd = [str(BIN / "mlflow"), *args, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with server_process(cmd, port, cwd=cwd, env=env, log=log, ready=ready, timeout=timeout) as (base, _):
        yield base


@contextlib.contextmanager
def server_process(
    cmd: list[str], port: int, *, cwd: Path, env: dict, log: Path, ready: str, timeout: float = 120
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``cmd`` (a server listening on 127.0.0.1:``port``) in its own process group: its base URL and process
    once GET ``ready`` answers 200. Always ended, with its gunicorn/uvicorn workers (the whole group)."""
    name = Path(cmd[0]).name + " " + cmd[1]
    with open(log, "wb") as out:  # the server keeps its own copy of the descriptor
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not answers(base + ready):
            assert proc.poll() is None, f"{name} exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"{name}: no {ready} answer in {timeout:.0f} s"
            time.sleep(0.5)
        yield base, proc
    finally:
        stop_group(proc)
