"""Device and mixed-precision choice: CUDA (bf16 autocast where supported, else fp16 + GradScaler), MPS, CPU.

device = resolve_device("auto")
amp_dtype, use_scaler = amp_settings(device, enabled=True)
"""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None picks CUDA, then Apple MPS, then CPU; anything else is passed to torch.device."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def amp_settings(device: torch.device, enabled: bool = True) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed).

    Only CUDA gets autocast: on CPU, bf16 autocast slows most of these models down, and MPS
    autocast support varies between torch releases. fp16 needs loss scaling; bf16 does not.
    """
    if not enabled or device.type != "cuda":
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type
