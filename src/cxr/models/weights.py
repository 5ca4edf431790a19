"""Reading pretrained weights from local files into a model, with errors that name the fix."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cxr.models.registry import WeightsUnavailableError, weights_fixes


def load_state_dict_file(model: nn.Module, name: str, path: str | Path, head_prefix: str) -> None:
    """Load a backbone state_dict into ``model`` (before its head is replaced).

    Keys of the original ImageNet head (``head_prefix``) are dropped: that head is replaced anyway,
    and its 1000-class shape would not fit. Every other key of the model must be matched.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(
            f"pretrained weights for model '{name}' not found: looked for the file {path}. " + weights_fixes(name))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or a pickled whole model (refused by weights_only)
        raise WeightsUnavailableError(
            f"could not read weights for model '{name}' from {path}: {exc}. Expected a state_dict saved with "
            f"torch.save(model.state_dict(), path). " + weights_fixes(name)) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if head_prefix:
        state = {k: v for k, v in state.items() if not k.startswith(head_prefix)}
    expected = {k: v for k, v in model.state_dict().items() if not (head_prefix and k.startswith(head_prefix))}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong_shape:
        raise WeightsUnavailableError(
            f"weights in {path} do not fit model '{name}': {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}), {len(wrong_shape)} of another shape "
            f"(e.g. {wrong_shape[:3]}). Expected a torchvision-layout {name} state_dict. " + weights_fixes(name))
    model.load_state_dict(state, strict=False)  # strict=False only for the dropped head keys
