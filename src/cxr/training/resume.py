"""Resume states: what an interrupted ``fit`` needs to continue to the very weights it would have reached.

    resume = ResumeState("data/resume/cnn.pt", config_hash(cfg, data_version), every=60.0, name="cnn")
    progress = resume.restore(model, optimizer, scheduler, scaler)   # a fresh Progress when none matches
    ...                                                              # after each epoch:
    resume.save_if_due(epoch, progress, model, optimizer, scheduler, scaler, last_epoch=...)
    resume.remove()                                                  # the run finished

A state is used only when written for the same RunConfig and data (``config_hash``); it carries the
model, optimizer, scheduler, scaler and every random generator, the history and the best epoch so far.
Under DDP rank 0 reads it and sends it to the others, and only rank 0 writes it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr.checkpoint import state_dict_copy
from cxr.files import atomic_write
from cxr.training import distributed


@dataclass
class Progress:
    """Where training stands: the epochs done, the best one and its weights, epochs without improvement."""

    history: list[dict] = field(default_factory=list)
    best: dict | None = None
    best_state: dict | None = None
    bad_epochs: int = 0
    start_epoch: int = 1


def config_hash(cfg, data_version: str, world_size: int = 1) -> str:
    """The key a resume state is written under: the RunConfig, the data and, beyond one process, the world
    size (it shapes every batch, so a state is exact only for the same one)."""
    payload = {
        "run": cfg.model_dump(mode="json"),
        "data_version": data_version,
        **({"world_size": world_size} if world_size > 1 else {}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class ResumeState:
    """One model's resume file: restored at the start, written every ``every`` seconds of training (0: after
    every epoch; never after the last, whose state would save nothing), removed at the end."""

    def __init__(self, path: str | Path | None, key: str, *, every: float = 0.0, name: str = "model"):
        self.path = Path(path) if path else None
        self.key = key
        self.every = every
        self.name = name
        self._last_save = time.perf_counter()

    def restore(self, model: nn.Module, optimizer, scheduler, scaler) -> Progress:
        saved = distributed.load_from_main(self.path) if self.path is not None else None
        if saved is None:
            return Progress()
        if saved.get("config_hash") != self.key:
            if distributed.is_main():
                print(f"[{self.name}] ignoring {self.path}: written for other parameters or data; starting afresh")
            return Progress()
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        _set_rng_state(saved["rng"])
        if distributed.is_main():
            print(f"[{self.name}] resuming from {self.path} after epoch {saved['epoch']}")
        return Progress(
            history=saved["history"],
            best=saved["best"],
            best_state=saved["model"] if saved.get("best_is_current") else saved["best_state"],
            bad_epochs=saved["bad_epochs"],
            start_epoch=saved["epoch"] + 1,
        )

    def save_if_due(
        self, epoch: int, progress: Progress, model: nn.Module, optimizer, scheduler, scaler, *, last_epoch: bool
    ) -> None:
        due = time.perf_counter() - self._last_save >= self.every
        if self.path is None or not distributed.is_main() or last_epoch or not due:
            return
        # When this epoch is the best one, its weights are stored once (VGG16: 0.5 GB saved per epoch).
        best_is_current = (progress.best or {}).get("best_epoch") == epoch
        state = {
            "config_hash": self.key,
            "epoch": epoch,
            "model": state_dict_copy(model),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": _rng_state(),
            "history": progress.history,
            "best": progress.best,
            "best_is_current": best_is_current,
            "best_state": None if best_is_current else progress.best_state,
            "bad_epochs": progress.bad_epochs,
        }
        atomic_write(self.path, functools.partial(torch.save, state))
        self._last_save = time.perf_counter()

    def remove(self) -> None:
        if self.path is not None and self.path.is_file() and distributed.is_main():
            self.path.unlink()


def _rng_state() -> dict[str, Any]:
    np_state: Any = np.random.get_state()  # the legacy tuple (kind, keys, pos, has_gauss, cached)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # numpy's state holds an ndarray, which weights_only loading refuses: store a list
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(_tuplify(state["python"])))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x
