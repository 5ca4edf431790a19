"""Process bodies for the torch.distributed tests (a helper module, so spawned processes can import them).

Each sets the environment torchrun would (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT) and goes
through the same ``distributed.process_group`` as ``src/train.py``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, world: int, *args) -> None:
    """``fn(rank, world, port, *args)`` in ``world`` spawned processes; a failure in one ends them all."""
    import torch.multiprocessing as mp

    mp.start_processes(fn, args=(world, free_port(), *args), nprocs=world, start_method="spawn", join=True)


def _env(rank: int, world: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)


class Interrupt(Exception):
    pass


def fit_worker(
    rank: int,
    world: int,
    port: int,
    cfg,
    train,
    val,
    out: str,
    resume: str | None = None,
    stop_after: int | None = None,
    device: str = "cpu",
    every_epoch: bool = False,
) -> None:
    """``fit`` on every rank; rank 0 saves what it returned to ``out`` (or ``out``.interrupted).
    ``device``: cpu (gloo) or cuda (this rank's GPU, NCCL). ``every_epoch``: each rank also keeps the
    model's weights after every epoch (``epochs`` in each entry of ``ranks``)."""
    from cxr.training import distributed
    from cxr.training import fit as F

    _env(rank, world, port)
    device = distributed.local_device(device)
    built, epochs = [], []
    if every_epoch:  # fit builds its model once in this process: keep a handle on it
        build = F.build_model

        def keep(*args, **kwargs):
            built.append(build(*args, **kwargs))
            return built[-1]

        F.build_model = keep

    def on_epoch_end(row):
        if built:
            epochs.append({k: v.detach().cpu().clone() for k, v in built[0].state_dict().items()})
        if stop_after is not None and row["epoch"] == stop_after:
            raise Interrupt

    with distributed.process_group(device, timeout_s=120):
        assert distributed.world_size() == world and distributed.rank() == rank
        try:
            r = F.fit(
                cfg,
                train,
                val,
                device=device,
                progress=False,
                resume_path=resume,
                data_version="v1",
                on_epoch_end=on_epoch_end,
            )
        except Interrupt:
            if rank == 0:
                Path(out + ".interrupted").touch()
            return
        # Every rank must end with the same weights and metrics; rank 0 checks the others'.
        mine = (r.history, r.best, r.threshold, {k: v.detach().cpu().clone() for k, v in r.model.state_dict().items()})
        parts = [None] * world
        torch.distributed.all_gather_object(parts, (*mine, epochs) if every_epoch else mine)
        if rank == 0:
            torch.save(
                {
                    "history": r.history,
                    "best": r.best,
                    "threshold": r.threshold,
                    "state": {k: v.cpu() for k, v in r.model.state_dict().items()},
                    "ranks": parts,
                },
                out,
            )


def grad_worker(rank: int, world: int, port: int, out: str) -> None:
    """One DDP step on each rank's slice of a batch vs one plain step on the whole batch, same weights."""
    from torch import nn

    from cxr.models import build_model
    from cxr.training import distributed

    _env(rank, world, port)
    with distributed.process_group(torch.device("cpu"), timeout_s=120):
        torch.manual_seed(0)
        x = torch.randn(8, 3, 16, 16)
        y = (torch.arange(8) % 2).float()
        single = build_model("cnn", pretrained=False, image_size=16).eval()  # eval: no dropout draws
        ddp_model = build_model("cnn", pretrained=False, image_size=16).eval()
        ddp_model.load_state_dict(single.state_dict())
        ddp = distributed.wrap(ddp_model, torch.device("cpu"))
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(0.5))
        loss_fn(single(x).squeeze(1), y).backward()
        sampler = distributed.ShardedBatchSampler(8, 8, seed=0, shuffle=False)
        idx = list(sampler)[0]
        loss_fn(ddp(x[idx]).squeeze(1), y[idx]).backward()
        if rank == 0:
            torch.save(
                {
                    "single": {n: p.grad for n, p in single.named_parameters()},
                    "ddp": {n: p.grad for n, p in ddp_model.named_parameters()},
                },
                out,
            )
