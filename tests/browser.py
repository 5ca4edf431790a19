"""Headless Chromium for the tests (``make system-packages`` installs it): a page's DOM once its scripts ran.

html = dump_dom("http://127.0.0.1:5000/#/experiments/1", tmp_path)
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

BROWSER_TIMEOUT_S = 120  # a page answers in seconds here; the limit only bounds a hung browser
# As root, with no display and a closed network: no sandbox, no GPU, none of Chromium's own connections.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(
            "Chromium not found (expected /usr/bin/chromium): install it with `make system-packages` "
            "(as root: apt-get update && apt-get install -y chromium)",
            pytrace=False,
        )
    return path


def new_profile(workdir: Path) -> Path:
    """A fresh --user-data-dir under ``workdir``: nothing cached or remembered from an earlier load."""
    return workdir / f"chromium-profile-{len(list(workdir.glob('chromium-profile-*')))}"


def browse(url: str, workdir: Path, *flags: str, budget_ms: int = 15000) -> str:
    """Chromium's stdout for ``url`` with ``flags`` (``--dump-dom``, ``--screenshot=...``) once virtual time has
    run the page's timers and promises for ``budget_ms``."""
    cmd = [chromium(), *FLAGS, f"--user-data-dir={new_profile(workdir)}", f"--virtual-time-budget={budget_ms}"]
    p = subprocess.run(
        [*cmd, *flags, url], check=False, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S, cwd=workdir
    )
    assert p.returncode == 0, f"chromium failed on {url} (exit {p.returncode}):\n{p.stderr[-3000:]}"
    return p.stdout


def dump_dom(url: str, workdir: Path, *flags: str, budget_ms: int = 15000) -> str:
    """The DOM of ``url`` after Chromium has run its scripts."""
    return browse(url, workdir, *flags, "--dump-dom", budget_ms=budget_ms)
