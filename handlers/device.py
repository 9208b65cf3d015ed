"""Where models run: CUDA when present, then Apple's MPS, else the CPU."""

from __future__ import annotations

from typing import Any


def pick_device(requested: str = "auto") -> str:
    """``auto`` picks the best available device; anything else is taken as given."""
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def inference_dtype(device: str) -> Any:
    """Half precision where the device does it well, full precision on the CPU."""
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
