"""One GPU per process, by claim: ``dvc queue start -j N`` runs N experiments, each on its own GPU(s).

    with claim_gpus(1) as claim:          # blocks until a GPU is free; claim.ordinals == [3], say
        device = torch.device("cuda", claim.ordinals[0])
        subprocess.run(cmd, env=claim.env)  # children see only the claimed GPUs (CUDA_VISIBLE_DEVICES)

A claim is an exclusive lock (:mod:`cxr.locks`) on ``<claim dir>/gpu-<id>.lock``. The kernel drops it
when the last file descriptor holding it closes, so a worker that crashes, is killed (even with
SIGKILL) or finishes releases its GPUs: no stale claim to clean up. Children started with the
claim (torchrun's ranks) inherit the descriptor and keep the GPU claimed while they live.

The claim folder is ``$CXR_GPU_CLAIM_DIR``, else ``<tmp>/cxr-gpu-claims``: one per machine, shared
by queued experiments (which run in temporary copies of the repository), by several clones and by
plain ``dvc exp run`` in two terminals. ``CXR_GPU_CLAIM=0`` turns claiming off (every process then
sees every GPU, as PyTorch does by default). GPU ids are the entries of ``CUDA_VISIBLE_DEVICES``
when it is set (indices or UUIDs), else ``0 .. torch.cuda.device_count() - 1``.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cxr.locks import try_lock

ENV_DIR, ENV_SWITCH = "CXR_GPU_CLAIM_DIR", "CXR_GPU_CLAIM"


class GpuClaimError(RuntimeError):
    """More GPUs wanted than this process can see (a stage ends with the message, no traceback)."""


def claim_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or Path(tempfile.gettempdir()) / "cxr-gpu-claims")


def visible_gpus() -> list[str]:
    """The ids of the GPUs this process may use, in CUDA ordinal order."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and not d.strip().startswith("-")]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


@dataclass
class Claim:
    """GPUs held by this process: their ids, their CUDA ordinals here, and the environment for children."""

    ids: list[str] = field(default_factory=list)
    ordinals: list[int] = field(default_factory=list)
    _fds: list[int] = field(default_factory=list, repr=False)

    @property
    def env(self) -> dict:
        e = dict(os.environ)
        if self.ids:
            e["CUDA_VISIBLE_DEVICES"] = ",".join(self.ids)
            e[ENV_SWITCH] = "0"  # children use what this process claimed; they do not claim again
        return e

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)  # closing the descriptor drops the flock
        self._fds.clear()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_gpus(
    count: int,
    *,
    at_least: int | None = None,
    gpus: list[str] | None = None,
    wait: bool = True,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
    say=print,
) -> Claim:
    """Claim up to ``count`` free GPUs (at least ``at_least``, default ``count``), waiting for them if needed.

    Nothing is claimed (an empty Claim) when claiming is off, no GPU is visible or ``count`` is 0.
    Asking for more GPUs than are visible is an error rather than a wait that never ends.
    """
    gpus = visible_gpus() if gpus is None else gpus
    if count <= 0 or not gpus or os.environ.get(ENV_SWITCH, "1") == "0":
        return Claim()
    need = count if at_least is None else max(1, min(at_least, count))
    if need > len(gpus):
        raise GpuClaimError(
            f"{need} GPU(s) wanted, {len(gpus)} visible ({', '.join(gpus)}). Fix: ask for fewer "
            "(train.devices / sweep.devices), or make more visible (CUDA_VISIBLE_DEVICES)."
        )
    folder = claim_dir()
    folder.mkdir(parents=True, exist_ok=True)
    start, told = time.monotonic(), False
    while True:
        held: list[tuple[int, str, int]] = []
        for ordinal, gid in enumerate(gpus):
            if len(held) == count:
                break
            fd = try_lock(folder / f"gpu-{gid.replace('/', '_')}.lock", inheritable=True)  # torchrun's ranks keep it
            if fd is not None:
                held.append((ordinal, gid, fd))
        if len(held) >= need:
            return Claim(ids=[g for _, g, _ in held], ordinals=[o for o, _, _ in held], _fds=[f for *_, f in held])
        for *_, fd in held:  # not enough: give them back so that two waiters cannot deadlock
            os.close(fd)
        if not wait or (timeout_s is not None and time.monotonic() - start > timeout_s):
            raise TimeoutError(f"no {need} free GPU(s) among {gpus} (claims in {folder})")
        if not told:
            say(f"[gpus] waiting for {need} free GPU(s) of {len(gpus)} (claimed by other experiments; {folder})")
            told = True
        time.sleep(poll_s)


_HELD: list[Claim] = []  # claims kept for the life of the process (hold_device)


def hold_device(requested: str = "auto"):
    """The device of a one-device stage (evaluate): on CUDA, a claimed GPU held until the process
    exits; ``requested`` other than auto/cuda (cpu, cuda:1, mps) is used as given, unclaimed."""
    import torch

    from cxr.device import resolve_device

    device = resolve_device(requested)
    if device.type != "cuda" or requested not in ("auto", "cuda"):
        return device
    claim = claim_gpus(1)
    if not claim.ordinals:
        return device
    _HELD.append(claim)
    device = torch.device("cuda", claim.ordinals[0])
    torch.cuda.set_device(device)
    return device
