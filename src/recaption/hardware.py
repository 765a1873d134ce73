"""Which device and dtype to run on, and whether torch sees the devices asked for: shared by the
captioning engines and executors, CLIP scoring and training."""

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
        have = f"cuda:0 to cuda:{count - 1}" if count > 1 else "cuda:0"
        raise RuntimeError(f"--device {requested} asked for, but torch sees only {count} "
                           f"GPU{'s' if count > 1 else ''} ({have})")
    return requested


class DeviceError(ValueError):
    """Devices asked for that this machine does not have, in one line."""


def check_devices(devices: list[str], option: str = "--devices") -> None:
    """Refuse, before any worker starts, devices torch does not see: cuda:N with N at or past
    the GPU count, any CUDA device without a GPU, mps without Apple's GPU. cpu is always there
    (tests list it several times to stand in for several GPUs)."""
    shown = f"{option} {','.join(devices)}"
    cuda = [d for d in devices if d.startswith("cuda")]
    if cuda:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceError(f"{shown}: torch sees no CUDA GPU here; leave {option} out to run on the CPU")
        missing = [d for d in cuda if d.partition(":")[2].isdigit() and int(d.partition(":")[2]) >= count]
        if missing:
            have = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise DeviceError(f"{shown}: torch sees only {count} GPU{'s' if count > 1 else ''} ({have}); "
                              f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not there")
    if "mps" in devices:
        import torch

        if not torch.backends.mps.is_available():
            raise DeviceError(f"{shown}: torch sees no Apple GPU (mps) here")


def pick_dtype(requested: str, device: str):
    import torch

    name = DTYPES.get(requested)
    if name is None:
        raise ValueError(f"--dtype {requested}: unknown; choose {DTYPE_CHOICES}")
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)
