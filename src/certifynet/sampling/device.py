"""The one device resolver of the toolkit (sampling, training, denoiser training, the benchmarks).

`parse_device` checks the text without touching torch (it runs while options are validated, before any
model is loaded); `resolve_device` turns it into a `torch.device` on this machine.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from certifynet.errors import CertifyNetError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda", "mps")


def parse_device(device: str | None) -> str:
    """Check a device: 'auto', 'cpu', 'cuda' or 'cuda:N' (also 'mps'); returns it unchanged (None → 'auto')."""
    text = "auto" if device is None else str(device)
    base, _, index = text.partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise CertifyNetError(f"{{device}} must be auto, cpu, cuda or cuda:N, got '{text}'", "device")
    return text


def resolve_device(device: str | None = None, local_rank: int | None = None) -> torch.device:
    """'auto'/None → CUDA when available, else CPU. A CUDA device always gets its index: a bare 'cuda' is
    cuda:`local_rank` when given (one process per GPU under DDP), else the current CUDA device."""
    import torch
    text = parse_device(device)
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CertifyNetError(f"{{device}} {text} requested but CUDA is not available", "device")
        index = int(text.split(":")[1]) if ":" in text else (
            local_rank if local_rank is not None else torch.cuda.current_device())
        if index >= torch.cuda.device_count():
            raise CertifyNetError(f"{{device}} {text}: there are only {torch.cuda.device_count()} CUDA devices",
                                  "device")
        return torch.device("cuda", index)
    if text == "mps" and not torch.backends.mps.is_available():
        raise CertifyNetError("{device} mps requested but MPS is not available", "device")
    return torch.device(text)
