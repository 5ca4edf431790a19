"""``cnn``: the reference notebook's custom CNN (3 conv blocks of 32/64/128, FC 256-128-1), from scratch."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cxr.models.registry import last_conv, register_model, weights_fixes
from cxr.models.weights import load_state_dict_file
from cxr.pretrained import WeightsUnavailableError

# The reference flattens the last feature map (28 x 28 x 128 at 224 px) into Linear(100352, 256):
# 25.7 M weights, and an architecture tied to one image size. We average-pool the last map to a
# fixed 4 x 4 grid first, so the same CNN (and checkpoint) works at any image size >= 8 px and the
# first FC layer is Linear(2048, 256); the conv stack and FC widths are the reference's.
CNN_POOL_GRID = 4


class ReferenceCNN(nn.Module):
    def __init__(self, in_channels: int = 3, dropout: float = 0.3):
        super().__init__()
        layers = []
        for c_in, c_out in ((in_channels, 32), (32, 64), (64, 128)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(CNN_POOL_GRID)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * CNN_POOL_GRID**2, 256),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(256, 128),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(128, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.pool(self.features(x)))
        return logits


def _cnn_spec(weights: str | None) -> dict[str, Any]:
    # No pretrained weights exist for it; [0, 1] is mapped to [-1, 1] (the same convention as the
    # in21k ViT) so the first layer sees zero-centred inputs.
    return {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "image_size": 224}


@register_model(
    "cnn",
    input_spec=_cnn_spec,
    channels_last=True,
    cam_layer=lambda m: last_conv(m.features),
    head=lambda m: m.classifier,
    description="reference custom CNN: 3 conv blocks (32/64/128) + FC 256-128-1",
)
def _build_cnn(pretrained: bool, weights: str | None, image_size: int) -> nn.Module:
    model = ReferenceCNN()
    if pretrained:
        if weights is None:
            raise WeightsUnavailableError(
                "model 'cnn' has no published pretrained weights, and models.cnn.weights is not set. "
                + weights_fixes("cnn")
            )
        load_state_dict_file(model, "cnn", weights, head_prefix="")
    return model
