"""Grad-CAM heatmaps for every registered model, computed by ``pytorch_grad_cam``.

    heat = grad_cam(model, "resnet50", x)          # x: (N, 3, H, W) normalised floats -> (N, H, W) in [0, 1]
    rgb = overlay(gray_uint8_image, heat[0])       # (H, W, 3) uint8

The target layer and, for a transformer, the reshape of its tokens into a feature map come from
the model's registry entry (``cam_layer``, ``cam_reshape``): ``cnn`` and ``vgg16`` their last conv,
``resnet50`` ``layer4``, ``vit`` the last block's ``layernorm_before`` with its patch tokens folded
back into the input's (h, w) grid (the pytorch_grad_cam ViT recipe).

The model's single logit is the score; by default the heatmap shows evidence *for PNEUMONIA*
(``BinaryClassifierOutputTarget(1)``), so colours mean the same thing on every image of a gallery.
A flat map (all zero: ViT or VGG16 trained from scratch often give one) localises nothing; the
figures here say "no localisation" on it instead of laying a uniform blue wash over the image.

The figures: ``gallery_figure`` (the evaluate stage's TP/TN/FP/FN gallery) and ``cam_figure``
(``cxr predict --cam``: the original beside its overlay at the input's resolution, a colour bar,
the probability and label).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from matplotlib.figure import Figure
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import nn

from cxr import CLASSES, plots
from cxr.models import get_entry

TARGETS = ("pneumonia", "predicted")
OUTCOMES = ("TP", "TN", "FP", "FN")
NO_LOCALISATION = "no localisation"  # written on an image whose Grad-CAM map is flat: nothing to overlay
BOXED: dict[str, Any] = {"color": "white", "fontsize": 9, "bbox": {"facecolor": "black", "alpha": 0.65, "lw": 0}}
FLAT_RANGE = 1e-3  # a map whose max - min is below this is flat (Grad-CAM maps are min-max scaled to [0, 1])
MAX_CAM_SIDE = 2048  # cxr predict --cam: each panel at the input's resolution, its long side at most this


def target_layer(model_name: str, model: nn.Module) -> nn.Module:
    """The layer whose activations and gradients Grad-CAM combines (the registry entry's ``cam_layer``)."""
    return get_entry(model_name).cam_layer(model)


def grad_cam(
    model: nn.Module,
    model_name: str,
    images: torch.Tensor | np.ndarray,
    *,
    target: str = "pneumonia",
    batch_size: int = 16,
) -> np.ndarray:
    """Grad-CAM heatmaps (N, H, W) in [0, 1] for normalised model inputs ``images`` (N, C, H, W).

    ``target="pneumonia"`` explains the PNEUMONIA logit; ``"predicted"`` explains each image's
    predicted class (the negated logit for images called NORMAL). The model is put in eval mode.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown Grad-CAM target {target!r}; expected one of {list(TARGETS)}")
    x = torch.as_tensor(images, dtype=torch.float32)
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), found {tuple(x.shape)}")
    if len(x) == 0:
        return np.zeros((0, *x.shape[-2:]), dtype=np.float32)
    device = next(model.parameters()).device
    model.eval()
    entry = get_entry(model_name)
    reshape = entry.cam_reshape(model, x.shape[-2], x.shape[-1]) if entry.cam_reshape else None
    layer = entry.cam_layer(model)
    out = []
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].to(device)
            if target == "pneumonia":
                targets = [BinaryClassifierOutputTarget(1)] * len(batch)
            else:
                with torch.no_grad():
                    pred = (model(batch).reshape(-1) >= 0).long().tolist()  # logit >= 0 <=> p >= 0.5
                targets = [BinaryClassifierOutputTarget(c) for c in pred]
            out.append(cam(input_tensor=batch, targets=targets))
    heat = np.concatenate(out).astype(np.float32)
    # pytorch_grad_cam min-max scales each map; a flat map can come out as NaN, which means "no evidence".
    return np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)


def overlay(gray: np.ndarray, heatmap: np.ndarray, image_weight: float = 0.55) -> np.ndarray:
    """Colour ``heatmap`` (h, w) in [0, 1] (JET) over the grayscale uint8 image (H, W): (H, W, 3) uint8.

    The heatmap is resized to the image, so a heatmap at model input size fits a cache-size image.
    """
    gray = np.asarray(gray)
    if gray.ndim != 2:
        raise ValueError(f"expected a grayscale image (H, W), found shape {gray.shape}")
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != gray.shape:
        heatmap = cv2.resize(heatmap, (gray.shape[1], gray.shape[0]), interpolation=cv2.INTER_LINEAR)
    rgb = np.repeat((gray.astype(np.float32) / 255.0)[..., None], 3, axis=-1)
    return show_cam_on_image(rgb, np.clip(heatmap, 0.0, 1.0), use_rgb=True, image_weight=image_weight)


def is_flat(heatmap: np.ndarray) -> bool:
    """True when ``heatmap`` localises nothing: constant (all zero after Grad-CAM's scaling) or empty."""
    heatmap = np.asarray(heatmap, dtype=np.float32)
    return heatmap.size == 0 or float(np.ptp(heatmap)) < FLAT_RANGE


def cam_to_image(heatmap: np.ndarray, shape: tuple[int, int], resize: str = "stretch") -> np.ndarray:
    """A heatmap of the (square) model input mapped onto the original image of ``shape`` (H, W).

    ``resize`` is the cache's: "stretch" maps the square onto the image; "pad" first crops away the
    letterbox bands the cache added around the image.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    h, w = int(shape[0]), int(shape[1])
    if resize == "pad":
        s = heatmap.shape[0]
        side = max(h, w)
        ch, cw = max(1, round(s * h / side)), max(1, round(s * w / side))
        top, left = (s - ch) // 2, (s - cw) // 2
        heatmap = heatmap[top : top + ch, left : left + cw]
    return cv2.resize(heatmap, (w, h), interpolation=cv2.INTER_LINEAR)


def outcome(label: int, predicted: int) -> str:
    return {(1, 1): "TP", (0, 0): "TN", (0, 1): "FP", (1, 0): "FN"}[(int(label), int(predicted))]


def gallery_figure(
    images,
    labels,
    probabilities,
    predicted,
    overlays=None,
    class_names: Sequence[str] = CLASSES,
    title: str = "Good and bad classifications",
    threshold: float | None = None,
) -> Figure:
    """Images grouped by outcome (one row each of TP, TN, FP, FN), each titled with P(pneumonia).

    ``images``: (N, H, W) uint8; ``overlays``: optional (N, H, W, 3) uint8 Grad-CAM overlays shown
    instead of the plain images, a None entry for a flat map (the plain image, marked "no localisation").
    Outcomes with no image show "none" (a perfect model has no FP).
    """
    images = np.asarray(images)
    labels = np.asarray(labels).astype(int)
    predicted = np.asarray(predicted).astype(int)
    probabilities = np.asarray(probabilities, dtype=float)
    groups = {o: [i for i in range(len(images)) if outcome(labels[i], predicted[i]) == o] for o in OUTCOMES}
    ncols = max(1, max(len(v) for v in groups.values()))
    fig, axes = plots.figure_grid(2.1 * ncols + 0.4, 2.45 * len(OUTCOMES) + 0.5, nrows=len(OUTCOMES), ncols=ncols)
    for r, o in enumerate(OUTCOMES):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(groups[o]):
                i = groups[o][c]
                if overlays is not None and overlays[i] is not None:
                    ax.imshow(overlays[i])
                else:
                    ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
                    if overlays is not None:  # a flat map: no colour wash that reads as "no evidence"
                        ax.text(0.5, 0.5, NO_LOCALISATION, ha="center", va="center", transform=ax.transAxes, **BOXED)
                ax.set_title(f"{o}: P(pneu) = {probabilities[i]:.3f}\nactual {class_names[labels[i]]}", fontsize=8)
            else:
                ax.axis("off")
                if c == 0:
                    ax.text(0.5, 0.5, f"{o}: none", ha="center", va="center", transform=ax.transAxes)
        axes[r, 0].set_ylabel(o, rotation=0, labelpad=18, fontsize=11, fontweight="bold")
    suffix = "" if threshold is None else f", threshold {threshold:.3f}"
    suffix += "\nGrad-CAM: red = evidence for PNEUMONIA" if overlays is not None else ""
    fig.suptitle(title + suffix)
    fig.tight_layout()
    return fig


def cam_figure(
    gray: np.ndarray, heatmap: np.ndarray, probability: float, label: str, threshold: float, note: str = ""
) -> Figure:
    """``cxr predict --cam``: the original (H, W) uint8 image beside its Grad-CAM ``heatmap`` (H, W, in [0, 1])
    with a colour bar; P(pneumonia) and the label in the title, ``note`` (the model and its training data)
    under it. Each panel is the image's own size in pixels (long side at most ``MAX_CAM_SIDE``), at
    ``plots.DPI``, and the text grows with it: save it with :func:`save_cam_figure`.
    """
    gray = np.asarray(gray)
    h, w = gray.shape
    scale = min(1.0, MAX_CAM_SIDE / max(h, w))
    pw, ph = max(1, round(w * scale)), max(1, round(h * scale))
    k = max(1.0, max(pw, ph) / 400)  # text and margins grow with the panels: a title readable at full size
    pad, cbar, cbar_labels = 12, round(16 * k), round(70 * k)
    width = pad + pw + pad + pw + pad + cbar + cbar_labels
    # the note wrapped to the figure's width (8 pt characters about 0.55 em wide), a line of 14 px each
    lines = textwrap.wrap(note, max(20, int(width / (8 * k * plots.DPI / 72 * 0.55)))) if note else []
    top = round((64 + 14 * len(lines)) * k)
    height = ph + top + pad
    fig = Figure(figsize=(width / plots.DPI, height / plots.DPI), dpi=plots.DPI)

    def box(x: float, wide: float) -> tuple[float, float, float, float]:
        return (x / width, pad / height, wide / width, ph / height)

    left, right = fig.add_axes(box(pad, pw)), fig.add_axes(box(2 * pad + pw, pw))
    for ax, name in ((left, "original"), (right, "Grad-CAM overlay")):
        ax.imshow(gray, cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
        ax.set_axis_off()
        ax.set_title(name, fontsize=9 * k)
    cax = fig.add_axes(box(3 * pad + 2 * pw, cbar))
    if is_flat(heatmap):
        boxed = {**BOXED, "fontsize": BOXED["fontsize"] * k}
        right.text(0.5, 0.5, NO_LOCALISATION, ha="center", va="center", transform=right.transAxes, **boxed)
        cax.set_axis_off()
    else:
        shown = right.imshow(np.clip(heatmap, 0, 1), cmap="jet", vmin=0, vmax=1, alpha=0.45)
        bar = fig.colorbar(shown, cax=cax)
        bar.set_label("Grad-CAM: evidence for PNEUMONIA", fontsize=8 * k)
        bar.ax.tick_params(labelsize=8 * k)
    fig.suptitle(f"{label}: P(pneumonia) = {probability:.3f} (threshold {threshold:.3f})", fontsize=11 * k)
    if lines:  # under the title
        fig.text(0.5, 1 - 34 * k / height, "\n".join(lines), ha="center", va="top", fontsize=8 * k)
    return fig


def save_cam_figure(fig: Figure, path: str | Path) -> Path:
    """Write a :func:`cam_figure` PNG at its exact pixel size (no tight bounding box: the panels keep their size)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=plots.DPI, metadata=plots.PNG_METADATA)
    return path
