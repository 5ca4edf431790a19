"""``resnet_small``: a small ResNet with batch norm for ~5,000 X-rays from scratch on a CPU.

A strided 3x3 stem, then one basic residual block (two 3x3 conv + batch norm, identity or 1x1
projection shortcut) per stage at widths 32/64/128/256, each later stage halving the side, global
average pooling, dropout and one linear logit: 1.2 M weights, about 0.3 GMAC at 128 px (the
reference CNN: 0.17 GMAC but 0.6 M of its 1.1 M weights in the FC head). Batch norm and the
residual paths let it train at a high learning rate in few epochs; the global pooling makes any
input side >= 32 px work.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cxr.models.registry import register_model, weights_fixes
from cxr.models.weights import load_state_dict_file
from cxr.pretrained import WeightsUnavailableError

RESNET_SMALL_WIDTHS = (32, 64, 128, 256)


def conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out)
    )


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, 3, stride)
        self.conv2 = conv_bn(c_out, c_out, 3, 1)
        self.shortcut = conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()
        bn = self.conv2[1]
        assert isinstance(bn, nn.BatchNorm2d)  # conv_bn: (conv, batch norm)
        nn.init.zeros_(bn.weight)  # each block starts as its shortcut: stable from-scratch training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))) + self.shortcut(x))


class SmallResNet(nn.Module):
    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = RESNET_SMALL_WIDTHS, dropout: float = 0.2):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(in_channels, widths[0], 3, 2), nn.ReLU(inplace=True))
        blocks, c_in = [], widths[0]
        for i, c_out in enumerate(widths):
            blocks.append(BasicBlock(c_in, c_out, stride=1 if i == 0 else 2))
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(widths[-1], 1)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.features(self.stem(x)))
        return logits


def _resnet_small_spec(weights: str | None) -> dict[str, Any]:
    # From scratch, as the CNN: [0, 1] mapped to [-1, 1].
    return {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "image_size": 224}


@register_model(
    "resnet_small",
    input_spec=_resnet_small_spec,
    channels_last=True,
    cam_layer=lambda m: m.features[-1],  # the last block's output (after the residual add), as resnet50's layer4
    head=lambda m: m.classifier,
    min_image_size=32,  # the stem and three strided stages halve the side four times
    description="small ResNet from scratch: strided stem + 4 basic blocks (32/64/128/256) with batch norm, GAP",
)
def _build_resnet_small(pretrained: bool, weights: str | None, image_size: int) -> nn.Module:
    model = SmallResNet()
    if pretrained:
        if weights is None:
            raise WeightsUnavailableError(
                "model 'resnet_small' has no published pretrained weights, and models.resnet_small.weights is "
                "not set. " + weights_fixes("resnet_small")
            )
        load_state_dict_file(model, "resnet_small", weights, head_prefix="")
    return model
