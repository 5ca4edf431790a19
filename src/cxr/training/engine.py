"""The loops: one training epoch, one evaluation pass, batch prediction.

    loader = make_loader(images, labels, batch_size=32, shuffle=True, seed=0, device=device)  # cxr.training.loaders
    stats = train_one_epoch(model, loss_fn, opt, loader, device, augment=aug, prep=norm)
    val = evaluate_loader(model, loss_fn, val_loader, device, norm, resize=lambda x: eval_resize(x, 64))
    probs = predict_probabilities(model, images_uint8, mean=m, std=s, image_size=64)

Batches travel as uint8 (B, 1, S, S) at the cache size; conversion to float, augmentation,
resizing and normalisation happen on the device, a whole batch at a time (``augment``/``resize``:
uint8 -> float [0, 1] at the model size; ``prep``: float [0, 1] -> normalised model input).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from cxr.data.augment import Normalize, eval_resize
from cxr.device import resolve_device
from cxr.stage import progress_bar, progress_enabled
from cxr.training.loaders import make_loader

Tensor = torch.Tensor


def _autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


def _progress(loader, enabled: bool, desc: str):
    """``loader``, or one iterator of it inside a tqdm bar. The bar gets ``iter(loader)``, not the
    loader: tqdm.auto's constructor calls ``iter()`` on what it wraps and iterates it again later,
    and each DataLoader iterator draws from the loader's generator, so a wrapped loader would make
    one iterator more than a bare one (the trained model then depended on ``--no-progress``)."""
    if not progress_enabled(enabled):  # a log (not a terminal) gets fit's line per epoch, no bar frames
        return loader
    return progress_bar(iter(loader), total=len(loader), desc=desc, leave=False, unit="batch")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite (a learning rate far too high, or broken inputs)."""

    def __init__(self, message: str, lr: float | None = None):
        super().__init__(message)
        self.lr = lr


def train_one_epoch(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader,
    device: torch.device,
    *,
    augment: Callable[[Tensor], Tensor],
    prep: Callable[[Tensor], Tensor],
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    progress: bool = False,
    desc: str = "train",
) -> dict:
    """One pass over ``loader``: returns mean loss, accuracy at 0.5, images/s and seconds."""
    model.train()
    non_blocking = device.type == "cuda"
    total_loss, correct, seen = 0.0, 0, 0
    _sync(device)
    start = time.perf_counter()
    live = progress_enabled(progress)  # a bar on a terminal; in a log, fit's line per epoch alone
    bar = _progress(loader, live, desc)
    for xb, yb in bar:
        xb = xb.to(device, non_blocking=non_blocking)
        yb = yb.to(device, non_blocking=non_blocking)
        x = prep(augment(xb))
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp_dtype):
            logits = model(x).squeeze(1)
            loss = loss_fn(logits.float(), yb)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        n = yb.shape[0]
        # .item() syncs; once per batch is cheap next to a forward/backward and gives a live loss.
        value = loss.item()
        if not math.isfinite(value) and scaler is None:  # with fp16's GradScaler an inf step is skipped, not fatal
            lr = float(optimizer.param_groups[0]["lr"])
            raise TrainingDivergedError(
                f"the training loss became {value} at batch {seen // max(1, n) + 1} (lr {lr:g}): the weights "
                f"have diverged, so training stops here instead of evaluating garbage. Lower the learning rate "
                f"(e.g. dvc exp run -S lr={min(1e-3, lr / 100):g}) or check the input data",
                lr=lr,
            )
        total_loss += value * n
        correct += int(((logits.detach() >= 0).float() == yb).sum().item())  # p >= 0.5, as in metrics
        seen += n
        if live:
            bar.set_postfix(loss=f"{total_loss / seen:.4f}", img_s=f"{seen / (time.perf_counter() - start):.0f}")
    _sync(device)
    seconds = time.perf_counter() - start
    if seen == 0:
        raise ValueError(
            "the training loader yielded no batches (empty training split, or drop_last with too few images)"
        )
    return {
        "loss": total_loss / seen,
        "acc": correct / seen,
        "images_per_s": seen / seconds,
        "seconds": seconds,
        "images": seen,
    }


@torch.no_grad()
def _forward_probs(model, loader, device, to_input, amp_dtype, loss_fn=None, progress=False, desc="eval"):
    model.eval()
    non_blocking = device.type == "cuda"
    probs, labels, total_loss = [], [], 0.0
    for xb, yb in _progress(loader, progress, desc):
        xb = xb.to(device, non_blocking=non_blocking)
        with _autocast(device, amp_dtype):
            logits = model(to_input(xb)).squeeze(1).float()
        if loss_fn is not None:
            total_loss += loss_fn(logits, yb.to(device)).item() * yb.shape[0]
        probs.append(torch.sigmoid(logits).cpu())
        labels.append(yb.cpu())
    p = torch.cat(probs).numpy().astype(np.float64) if probs else np.zeros(0)
    y = torch.cat(labels).numpy().astype(np.int64) if labels else np.zeros(0, dtype=np.int64)
    return p, y, total_loss


def evaluate_loader(
    model: nn.Module,
    loss_fn: nn.Module,
    loader,
    device: torch.device,
    prep: Callable[[Tensor], Tensor],
    *,
    resize: Callable[[Tensor], Tensor],
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict:
    """Loss, accuracy at 0.5, ROC-AUC (NaN with one class present), and the raw probabilities and labels."""
    probs, labels, total_loss = _forward_probs(
        model, loader, device, lambda x: prep(resize(x)), amp_dtype, loss_fn=loss_fn, progress=progress, desc="val"
    )
    return summarize_eval(probs, labels, total_loss)


def summarize_eval(probs: np.ndarray, labels: np.ndarray, loss_sum: float) -> dict:
    """Mean loss, accuracy at 0.5 and ROC-AUC (NaN with one class present) of a whole split's probabilities."""
    n = len(labels)
    if n == 0:
        raise ValueError("the evaluation loader yielded no images (empty validation split?)")
    auc = float(roc_auc_score(labels, probs)) if len(np.unique(labels)) == 2 else float("nan")
    return {
        "loss": loss_sum / n,
        "acc": float(((probs >= 0.5) == labels).mean()),
        "auc": auc,
        "probs": probs,
        "labels": labels,
    }


def predict_probabilities(
    model: nn.Module,
    images,
    *,
    mean,
    std,
    image_size: int,
    device: str | torch.device | None = None,
    batch_size: int = 64,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> np.ndarray:
    """P(pneumonia) for uint8 images (N, S, S) (numpy, memmap or tensor), with the evaluation transform."""
    device = resolve_device(device)
    if isinstance(images, torch.Tensor):
        images = images.cpu().numpy()
    if images.ndim == 2:
        images = images[None]
    model = model.to(device)
    loader = make_loader(images, None, batch_size=batch_size, shuffle=False, device=device)
    norm = Normalize(mean, std)
    probs, _, _ = _forward_probs(
        model, loader, device, lambda x: norm(eval_resize(x, image_size)), amp_dtype, progress=progress, desc="predict"
    )
    return probs
