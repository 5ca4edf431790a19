"""Grad-CAM heatmaps for every registered model, computed by ``pytorch_grad_cam``.

    heat = grad_cam(model, "resnet50", x)          # x: (N, 3, H, W) normalised floats -> (N, H, W) in [0, 1]
    rgb = overlay(gray_uint8_image, heat[0])       # (H, W, 3) uint8

The target layer and, for a transformer, the reshape of its tokens into a feature map come from
the model's registry entry (``cam_layer``, ``cam_reshape``): ``cnn`` and ``vgg16`` their last conv,
``resnet50`` ``layer4``, ``vit`` the last block's ``layernorm_before`` with its patch tokens folded
back into the input's (h, w) grid (the pytorch_grad_cam ViT recipe).

The model's single logit is the score; by default the heatmap shows evidence *for PNEUMONIA*
(``BinaryClassifierOutputTarget(1)``), so colours mean the same thing on every image of a gallery.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import nn

from cxr.models import get_entry

TARGETS = ("pneumonia", "predicted")


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
