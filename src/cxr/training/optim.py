"""The optimizer, the learning-rate schedule and the fine-tuning parameter groups of one run.

optimizer = make_optimizer(cfg, finetune_param_groups(cfg, model))
scheduler = make_scheduler(cfg, optimizer)
set_backbone_trainable(cfg, model, epoch)   # pretrained models: the head alone for the first epochs
"""

from __future__ import annotations

import torch
from torch import nn

from cxr.training.run_config import RunConfig


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:
    """The fused kernels matter on CPU: the default per-parameter loop spends ~3 s per AdamW step on
    VGG16's 134 M parameters on 2 cores, the fused one ~0.1 s. Devices without them fall back."""
    params = list(params)
    classes = {
        "adamw": (torch.optim.AdamW, {}),
        "adam": (torch.optim.Adam, {}),
        "sgd": (torch.optim.SGD, {"momentum": cfg.momentum}),
    }
    if cfg.optimizer not in classes:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; expected adamw, adam or sgd")
    cls, extra = classes[cfg.optimizer]
    try:
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True, **extra)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


def finetune_param_groups(cfg: RunConfig, model: nn.Module):
    """The head first (its lr is the one logged), then the backbone at ``lr * backbone_lr_factor``;
    plain ``model.parameters()`` when neither fine-tuning option is in use."""
    if cfg.freeze_backbone_epochs == 0 and cfg.backbone_lr_factor == 1.0:
        return model.parameters()
    from cxr.models.weights import split_parameters

    backbone, head = split_parameters(model, cfg.model)
    return [{"params": head, "lr": cfg.lr}, {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_factor}]


def set_backbone_trainable(cfg: RunConfig, model: nn.Module, epoch: int) -> None:
    """Epochs 1..freeze_backbone_epochs train the head only (the backbone gets no gradient, so AdamW
    neither steps nor decays it); later epochs train everything."""
    if cfg.freeze_backbone_epochs == 0:
        return
    from cxr.models.weights import split_parameters

    backbone, _ = split_parameters(model, cfg.model)
    for p in backbone:
        p.requires_grad_(epoch > cfg.freeze_backbone_epochs)


def make_scheduler(cfg: RunConfig, optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    if cfg.scheduler == "steplr":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.epochs, 1))
    if cfg.scheduler == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ValueError(f"unknown scheduler {cfg.scheduler!r}; expected steplr, cosine or none")
