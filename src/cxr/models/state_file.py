"""A state_dict file (``model.pt``, a pretrained backbone's ``.pth``) read as tensors only, one line per defect.

    state = read_state_dict(Path("models/cnn/model.pt"), fix="rewrite it with ...", error=CheckpointError)
    why = mismatch(model.state_dict(), state)      # None when every key and shape fits

``torch.load(weights_only=True)`` refuses a pickle that would run code, without running it, but its
message advises loading again with the unsafe mode: that advice is never passed on here. Its other
failures (an empty file, not torch's format) come as EOFError or multi-line RuntimeErrors; each
becomes ``error``, one line naming the file and the ``fix``.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch


def read_state_dict(path: Path, fix: str, error: type[Exception] = ValueError) -> dict[str, Any]:
    """The tensors in ``path``; ``error`` for a file that is missing, empty, not torch's format or holds
    anything but tensors (refused unread)."""
    if not path.is_file():
        raise error(f"{path} is missing, expected a state_dict file: {fix}")
    if path.stat().st_size == 0:
        raise error(f"{path} is empty (0 bytes), expected a state_dict file: {fix}")
    try:
        # No mmap: torchvision's older files (vgg16-397923af.pth) predate the zip format mmap needs.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
        if found is None:  # not a refusal: bytes that are no pickle torch can read
            raise error(f"{path} is not a readable state_dict (not torch's file format): {fix}") from None
        raise error(
            f"{path} holds Python objects ({found.group(1)}), not only tensors: refused, and nothing in it was run "
            f"(this project loads weights as tensors only, whatever the file's origin): {fix}"
        ) from None
    except (EOFError, OSError, RuntimeError, ValueError, zipfile.BadZipFile) as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise error(f"{path} is not a readable state_dict ({type(exc).__name__}: {first}): {fix}") from None
    if not isinstance(state, dict):
        raise error(f"{path} holds a {type(state).__name__}, expected a state_dict (a mapping of tensors): {fix}")
    return state


def mismatch(expected: dict[str, Any], state: dict[str, Any]) -> str | None:
    """How ``state`` fails to fit a model whose state_dict is ``expected`` (missing, unexpected keys, wrong
    shapes, the first two of each), or None when it fits."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        k
        for k in expected
        if k in state and isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    parts = [
        f"{len(keys)} {what}, e.g. {keys[:2]}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
        if keys
    ]
    return "; ".join(parts) or None
