"""The arithmetic a run uses on its device: `train.amp` resolved once, with the reason the run states.

`auto` picks bf16 autocast where the hardware computes in bf16: CUDA devices that support it (Ampere and
later) and CPUs with native bf16 instructions (AVX512-BF16 or AMX on x86, the BF16 extension on Arm).
oneDNN runs bf16 on older AVX-512 CPUs too, but by converting to fp32 and back, so `auto` stays in fp32
there. CUDA without bf16 gets fp16 with a GradScaler, the usual choice on those GPUs.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# CPU feature flags (Linux /proc/cpuinfo: x86 `flags`, Arm `Features`) that mean native bf16 arithmetic
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpuinfo(key: str, path: Path = Path("/proc/cpuinfo")) -> str | None:
    """The first value of `key` in /proc/cpuinfo; None where there is none (or no /proc)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    fields = (line.partition(":") for line in lines)
    return next((value.strip() for k, _, value in fields if k.strip() == key), None)


def cpu_bf16(flags: set[str] | None = None) -> str | None:
    """The flag that makes bf16 native on this CPU, or None."""
    if flags is None:
        flags = set((cpuinfo("flags") or cpuinfo("Features") or "").split())
    return next((f for f in NATIVE_BF16_FLAGS if f in flags), None)


def cpu_name() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine()


def resolve_amp(amp: str, device: torch.device, flags: set[str] | None = None) -> tuple[str, str]:
    """(the autocast `device` runs for `train.amp`, why). fp16 needs CUDA's loss scaling, so elsewhere it
    becomes bf16 (fp32's range, no scaler). `flags` stands in for the CPU's own (tests)."""
    if amp == "fp16" and device.type != "cuda":
        return "bf16", "train.amp=fp16 runs as bf16 off CUDA: fp16 needs CUDA's loss scaling"
    if amp != "auto":
        return amp, f"train.amp={amp}"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            return "bf16", f"auto: {name} computes in bf16"
        return "fp16", f"auto: {name} has no bf16; fp16 with loss scaling"
    if device.type == "cpu":
        if flag := cpu_bf16(flags):
            return "bf16", f"auto: this CPU has native bf16 ({flag})"
        return "off", "auto: this CPU has no native bf16 (avx512_bf16, amx_bf16 or bf16), so fp32"
    return "off", f"auto: fp32 on {device.type}"


def autocast(device: torch.device, amp: str):
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])
