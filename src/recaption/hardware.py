"""Which device and dtype to run on: shared by the captioning engines, CLIP scoring and training."""

from __future__ import annotations

from .models.loading import DTYPE_CHOICES, DTYPES


def pick_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {requested} asked for, but torch sees no CUDA GPU")
    index = requested.partition(":")[2]
    if requested.startswith("cuda:") and index.isdigit() and int(index) >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise RuntimeError(
            f"--device {requested} asked for, but torch sees only {count} GPU{'s' if count > 1 else ''}"
            f" (cuda:0{f' to cuda:{count - 1}' if count > 1 else ''})"
        )
    return requested


def pick_dtype(requested: str, device: str):
    import torch

    name = DTYPES.get(requested)
    if name is None:
        raise ValueError(f"--dtype {requested}: unknown; choose {DTYPE_CHOICES}")
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)
