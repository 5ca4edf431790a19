"""The GPU claim of queued experiments: distinct GPUs per process, waiting when all are taken, and
no stale claim after a holder is killed. Simulated GPUs (CUDA_VISIBLE_DEVICES ids): no GPU needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from cxr import gpus

HOLDER = """
import sys, time
from cxr.gpus import claim_gpus
c = claim_gpus(int(sys.argv[1]), poll_s=0.05, say=lambda m: print(m, file=sys.stderr))
print(",".join(c.ids), flush=True)
time.sleep(120)
"""


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv(gpus.ENV_DIR, str(tmp_path / "claims"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv(gpus.ENV_SWITCH, raising=False)
    return dict(os.environ)


def holder(env: dict, count: int = 1) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(count)], env=env, stdout=subprocess.PIPE, text=True)


def first_line(p: subprocess.Popen, timeout: float = 60) -> str:
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    assert sel.select(timeout), "the claiming process printed nothing in time"
    return p.stdout.readline().strip()


def test_two_processes_get_different_gpus_a_third_waits_until_a_holder_is_killed(env):
    a, b = holder(env), holder(env)
    c = None
    try:
        got = {first_line(a), first_line(b)}
        assert got == {"0", "1"}  # one GPU each
        c = holder(env)  # both taken: it waits
        time.sleep(1.0)
        assert c.poll() is None
        with pytest.raises(TimeoutError):
            gpus.claim_gpus(1, wait=False)
        a.send_signal(signal.SIGKILL)  # a crashed worker: no cleanup code runs
        a.wait(timeout=10)
        assert first_line(c) in got  # the killed holder's GPU, free again
    finally:
        for p in (a, b, c):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(timeout=10)


def test_a_claim_is_released_and_passed_to_children(env):
    with gpus.claim_gpus(2) as claim:
        assert claim.ids == ["0", "1"] and claim.ordinals == [0, 1]
        assert claim.env["CUDA_VISIBLE_DEVICES"] == "0,1" and claim.env[gpus.ENV_SWITCH] == "0"
        with pytest.raises(TimeoutError):
            gpus.claim_gpus(1, wait=False)
    with gpus.claim_gpus(1, gpus=["0", "1"]) as again:  # released on exit
        assert again.ids == ["0"]


def test_up_to_count_at_least_one_and_the_off_switches(env, monkeypatch):
    with gpus.claim_gpus(1) as first:
        with gpus.claim_gpus(2, at_least=1) as rest:  # the sweep's way: what is free, at least one
            assert rest.ids == ["1"] and rest.ordinals == [1] and first.ids == ["0"]
    with pytest.raises(gpus.GpuClaimError, match="3 GPU\\(s\\) wanted, 2 visible"):
        gpus.claim_gpus(3)
    assert gpus.claim_gpus(0).ids == []  # a CPU run claims nothing
    monkeypatch.setenv(gpus.ENV_SWITCH, "0")
    assert gpus.claim_gpus(2).ids == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aa,GPU-bb")
    assert gpus.visible_gpus() == ["GPU-aa", "GPU-bb"]
