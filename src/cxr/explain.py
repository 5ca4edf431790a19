"""Grad-CAM heatmaps for every registered model, computed by ``pytorch_grad_cam``.

    heat = grad_cam(model, "resnet50", x)          # x: (N, 3, H, W) normalised floats -> (N, H, W) in [0, 1]
    rgb = overlay(gray_uint8_image, heat[0])       # (H, W, 3) uint8

Target layers: ``cnn`` its last conv layer, ``resnet50`` ``layer4`` (its last bottleneck), ``vgg16``
the last conv in ``features``, ``vit`` the last encoder layer's ``layernorm_before``: its output is
the token sequence (B, 1 + h*w, D); dropping the CLS token and folding the patch tokens back into an
(h, w) grid turns it into a feature map Grad-CAM can weight (the pytorch_grad_cam ViT recipe). The
grid follows the *input* size, so runs at a non-224 size (interpolated position embeddings) work.

The model's single logit is the score; by default the heatmap shows evidence *for PNEUMONIA*
(``BinaryClassifierOutputTarget(1)``), so colours mean the same thing on every image of a gallery.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.image import show_cam_on_image
from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget
from torch import nn

TARGETS = ("pneumonia", "predicted")


def _last_conv(module: nn.Module) -> nn.Module:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"no Conv2d layer found in {type(module).__name__}")
    return convs[-1]


def _hf_vit(model: nn.Module) -> nn.Module:
    # cxr.models wraps ViTForImageClassification as ``model.hf``; accept the bare HF model too.
    hf = getattr(model, "hf", model)
    if not hasattr(hf, "vit"):
        raise ValueError(f"expected a Hugging Face ViTForImageClassification (with .vit), found {type(hf).__name__}")
    return hf


def _vit_layers(model: nn.Module) -> nn.ModuleList:
    vit = _hf_vit(model).vit
    # transformers >= 5 keeps the blocks in ``vit.layers``; 4.x in ``vit.encoder.layer``.
    layers = getattr(vit, "layers", None)
    return layers if layers is not None else vit.encoder.layer


_TARGET_LAYERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "cnn": lambda m: _last_conv(m.features if hasattr(m, "features") else m),
    "resnet50": lambda m: m.layer4,
    "vgg16": lambda m: _last_conv(m.features),
    "vit": lambda m: _vit_layers(m)[-1].layernorm_before,
}


def target_layer(model_name: str, model: nn.Module) -> nn.Module:
    """The layer whose activations and gradients Grad-CAM combines, for a model of ``model_name``."""
    try:
        return _TARGET_LAYERS[model_name](model)
    except KeyError:
        raise ValueError(f"no Grad-CAM target layer known for model {model_name!r}; "
                         f"known: {sorted(_TARGET_LAYERS)} (add one to cxr.explain._TARGET_LAYERS)") from None


def _vit_reshape(model: nn.Module, height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
    patch = int(_hf_vit(model).config.patch_size)
    gh, gw = height // patch, width // patch

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        b, t, d = tokens.shape
        if t - 1 != gh * gw:
            raise ValueError(f"ViT token count {t} does not match a {gh}x{gw} patch grid + CLS "
                             f"for a {height}x{width} input with patch size {patch}")
        grid = tokens[:, 1:, :].reshape(b, gh, gw, d)  # drop CLS; patches are row-major
        return grid.permute(0, 3, 1, 2)  # (B, D, h, w), like a conv feature map

    return reshape


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
    reshape = _vit_reshape(model, x.shape[-2], x.shape[-1]) if model_name == "vit" else None
    layer = target_layer(model_name, model)
    out = []
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        for start in range(0, len(x), batch_size):
            batch = x[start:start + batch_size].to(device)
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
