"""Data-parallel training with PyTorch's own engine: torchrun + torch.distributed + DDP.

    python src/train.py ... (train.devices: 2)      # re-executes itself under torchrun, 2 processes
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        src/train.py --params params.yaml --model resnet50 ...   # several nodes: torchrun as usual

Everything here is a no-op on one process (no process group): ``fit`` behaves exactly as before.
Under a process group (NCCL on GPUs, gloo on CPU):

- every rank holds the whole cached split; each epoch one permutation seeded by ``epoch_seed``
  (the same on every rank) is cut into global batches of ``batch_size`` images and every global
  batch into ``world`` equal per-rank slices (:class:`ShardedBatchSampler`). So ``batch_size``
  keeps its meaning (the global batch, hence lr and the sweep grid too), DDP's gradient average
  over equal slices is the gradient of the global batch's mean loss, and every rank takes the same
  number of steps. A trailing partial batch is trimmed to a multiple of ``world`` (at most
  ``world - 1`` images an epoch, a different few each epoch), and dropped when that leaves fewer
  than 2 images a rank (BatchNorm in train mode needs 2);
- augmentation and dropout draw from a seed of (seed, epoch, rank) (:func:`rank_seed`), so a
  resumed run draws what the uninterrupted one did and ranks do not repeat each other's draws;
- train loss/accuracy are sums over all ranks' images (:func:`reduce_train_stats`); validation is
  sharded in contiguous blocks, evaluated with rank 0's BatchNorm buffers, and gathered back in
  order (:func:`gather_eval`), so every rank computes the same metrics (and the same early-stopping
  decision) on the whole validation split, as one device would;
- rank 0 alone reads and writes the resume file (:func:`load_from_main` sends its contents to the
  other ranks) and writes the checkpoint, the metrics and MLflow (:func:`is_main`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import weakref
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

LAUNCHER_ENV = ("LOCAL_RANK", "WORLD_SIZE", "RANK")  # set by torchrun (torch.distributed.run)


# --------------------------------------------------------------------------------------------
# Who am I
# --------------------------------------------------------------------------------------------


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


_rank = rank  # for signatures whose argument is called rank


def is_main() -> bool:
    return rank() == 0


def under_launcher() -> bool:
    """Whether this process was started by torchrun (its environment variables are set)."""
    return all(k in os.environ for k in LAUNCHER_ENV)


def resolve_devices(devices: int | str, device: str = "auto") -> int:
    """``train.devices`` -> number of processes: an integer, or ``auto`` = every visible GPU (1 without CUDA).

    On CPU (``device`` cpu, or no CUDA) N means N gloo processes, which is how the CPU tests run DDP.
    """
    if isinstance(devices, str) and devices.strip().lower() == "auto":
        if str(device).startswith("cpu") or not torch.cuda.is_available():
            return 1
        return max(1, torch.cuda.device_count())
    n = int(devices)
    if n < 1:
        raise ValueError(f"devices: expected a positive integer or auto, found {devices!r}")
    return n


# --------------------------------------------------------------------------------------------
# Launch and process group
# --------------------------------------------------------------------------------------------


def launch_command(nproc: int, script: str, argv: Sequence[str]) -> list[str]:
    """The single-node torchrun command line that runs ``script argv`` in ``nproc`` processes.

    ``--standalone`` rendezvouses on a free local port, so several launches on one machine (queued
    experiments) do not collide.
    """
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={int(nproc)}",
        str(script),
        *argv,
    ]


def launch(nproc: int, script: str, argv: Sequence[str], env: dict | None = None) -> int:
    """Run ``script`` under torchrun with ``nproc`` processes on this node; its exit code."""
    cmd = launch_command(nproc, script, argv)
    print(f"[distributed] {nproc} processes: {' '.join(cmd[1:])}", flush=True)
    e = dict(os.environ if env is None else env)
    e.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(nproc))))
    return subprocess.run(cmd, env=e).returncode


def local_device(device: str | torch.device = "auto") -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` on GPUs (and made current), CPU otherwise."""
    from cxr.device import resolve_device

    dev = resolve_device(device)
    if under_launcher():  # a rank: its own GPU, or the CPU (gloo has no MPS tensors)
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if dev.type == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


@contextlib.contextmanager
def process_group(device: torch.device, timeout_s: float = 1800) -> Iterator[None]:
    """Join torchrun's process group (NCCL for CUDA, gloo otherwise) for the duration; nothing when
    not under torchrun or alone. Leaves through a barrier, so no rank exits while another still
    needs it, then destroys the group."""
    if not under_launcher() or int(os.environ["WORLD_SIZE"]) == 1 or dist.is_initialized():
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s), **kwargs)
    ok = False
    try:
        yield
        ok = True
    finally:
        if ok:
            barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def load_from_main(path) -> dict | None:
    """``torch.load(path)`` (weights only, on CPU) as rank 0 finds it, on every rank; None when rank 0
    has no such file. Other ranks never read the file: on several nodes only rank 0's disk holds it."""
    from pathlib import Path

    path = Path(path)

    def read():
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    if not active():
        return read()
    box = [read() if is_main() else None]
    dist.broadcast_object_list(box, src=0, device=_reduce_device())
    return box[0]


# --------------------------------------------------------------------------------------------
# Model, data, seeds
# --------------------------------------------------------------------------------------------


# A wrapper -> the names of the parameters it synchronises (those that required a gradient when built).
_BUILT_FOR: weakref.WeakKeyDictionary[torch.nn.Module, tuple[str, ...]] = weakref.WeakKeyDictionary()


def wrap(model: torch.nn.Module, device: torch.device, current: torch.nn.Module | None = None) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when there are several ranks, else ``model`` itself.

    ``current``: the wrapper now in use, returned as it is while the parameters of ``model`` that require
    a gradient are those it was built for, else replaced (``train.freeze_backbone_epochs`` flips them
    twice a run). DDP registers its gradient hooks and buckets for the parameters that require a
    gradient when it is built: one frozen later never reports its gradient, so the next step fails
    ("Expected to have finished reduction in the prior iteration"); one unfrozen later would train
    unsynchronised on every rank. A new wrapper costs one broadcast of the weights (identical on every
    rank by then); ``find_unused_parameters=True`` would instead walk the autograd graph at every step
    of the run, and a zero backbone lr would still compute the backbone's gradients and feed them into
    AdamW's moments, which a frozen backbone in one process never sees.
    """
    if not active():
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    trainable = tuple(name for name, p in model.named_parameters() if p.requires_grad)
    if current is not None and _BUILT_FOR.get(current) == trainable:
        return current
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    ddp = DDP(model, device_ids=ids, find_unused_parameters=False)
    _BUILT_FOR[ddp] = trainable
    return ddp


def rank_seed(seed: int) -> int:
    """Rank 0 (and a single process) keeps ``seed``; other ranks get a distinct seed derived from it."""
    r = rank()
    return int(seed) if r == 0 else (int(seed) * 6_364_136_223_846_793_005 + r * 1_442_695_040_888_963_407) % 2**63


class ShardedBatchSampler:
    """This rank's slice of every global batch of one epoch; re-iterable, with ``len``.

    One permutation of ``range(n)`` from ``seed`` (the same on every rank), cut into global
    batches of ``global_batch``; rank r takes the r-th of ``world`` equal slices of each.
    """

    def __init__(
        self,
        n: int,
        global_batch: int,
        *,
        seed: int,
        rank: int | None = None,
        world: int | None = None,
        shuffle: bool = True,
    ):
        self.world = world_size() if world is None else int(world)
        self.rank = _rank() if rank is None else int(rank)
        if global_batch % self.world:
            raise ValueError(
                f"batch_size {global_batch} is not a multiple of the {self.world} devices: every device "
                f"takes an equal share of each batch. Fix: -S batch_size={_multiple(global_batch, self.world)} "
                f"(or another multiple of {self.world}), or fewer devices."
            )
        self.n, self.global_batch, self.seed, self.shuffle = int(n), int(global_batch), int(seed), shuffle
        self.batch_size = self.global_batch // self.world  # per rank
        self._batches = self._plan()

    def _plan(self) -> list[list[int]]:
        order = (
            torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed))
            if self.shuffle
            else torch.arange(self.n)
        ).tolist()
        out = []
        for a in range(0, self.n, self.global_batch):
            chunk = order[a : a + self.global_batch]
            per = len(chunk) // self.world
            if per < min(2, self.batch_size):  # a trailing batch too small to split
                continue
            out.append(chunk[self.rank * per : (self.rank + 1) * per])
        return out

    def __iter__(self):
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


def _multiple(b: int, w: int) -> int:
    return max(w, (b // w) * w)


def shard_bounds(n: int, world: int | None = None, r: int | None = None) -> tuple[int, int]:
    """[start, stop) of rank r's contiguous block of ``n`` rows (as ``np.array_split`` cuts them)."""
    world = world_size() if world is None else world
    r = rank() if r is None else r
    q, m = divmod(int(n), world)
    start = r * q + min(r, m)
    return start, start + q + (1 if r < m else 0)


def shard(images, labels):
    """This rank's contiguous block of a split (a slice: a memory-mapped cache stays memory-mapped)."""
    if not active():
        return images, labels
    a, b = shard_bounds(len(labels))
    return images[a:b], labels[a:b]


# --------------------------------------------------------------------------------------------
# Collectives on metrics
# --------------------------------------------------------------------------------------------


def _reduce_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def reduce_train_stats(tr: dict) -> dict:
    """One epoch's train stats over every rank: loss and accuracy over all images, the slowest rank's
    seconds, the images of all ranks per second."""
    if not active():
        return tr
    n = tr["images"]
    t = torch.tensor([tr["loss"] * n, tr["acc"] * n, float(n)], dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(t)
    secs = torch.tensor([tr["seconds"]], dtype=torch.float64, device=t.device)
    dist.all_reduce(secs, op=dist.ReduceOp.MAX)
    loss_sum, correct, seen = t.tolist()
    seconds = float(secs.item())
    return {
        **tr,
        "loss": loss_sum / seen,
        "acc": correct / seen,
        "images": int(seen),
        "seconds": seconds,
        "images_per_s": seen / seconds,
    }


def sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank: what DDP's next forward would
    broadcast anyway, and what rank 0 saves."""
    if not active():
        return
    for b in model.buffers():
        dist.broadcast(b.data, src=0)


def gather_eval(ev: dict) -> dict:
    """Per-rank results of ``evaluate_loader`` on :func:`shard` blocks -> the whole split's, on every rank."""
    if not active():
        return ev
    from cxr.training.engine import summarize_eval

    n = len(ev["labels"])
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, (ev["loss"] * n, np.asarray(ev["probs"]), np.asarray(ev["labels"])))
    loss_sum = float(sum(p[0] for p in parts))
    probs = np.concatenate([p[1] for p in parts])
    labels = np.concatenate([p[2] for p in parts])
    return summarize_eval(probs, labels, loss_sum)
