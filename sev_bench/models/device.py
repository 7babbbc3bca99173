"""Where and in which precision a model runs: `--device` and `--dtype` resolved to a torch device string
and dtype, with a one-line UserError for a choice this machine cannot honour.

torch is imported inside the functions: importing sev_bench.models must not pay torch's start-up cost
(the CLI and `sev-bench leaderboard build` import it without running a model)."""

from __future__ import annotations

from ..errors import UserError

DTYPES = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: str) -> str:
    import torch  # heavy: see the module docstring

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
        index = device.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise UserError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices")
        return device
    raise UserError(f"--device {device!r}: expected auto, cpu, cuda or cuda:N")


def resolve_dtype(dtype: str, device: str):
    """`auto` = bfloat16 on a GPU that supports it (float16 otherwise), float32 on CPU (the protocol's
    analysis precision, and exact batched == unbatched replies)."""
    import torch  # heavy: see the module docstring

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
