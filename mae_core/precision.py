"""Whether bf16 is fast on this CPU. On a CPU without native bf16 instructions (x86 without
avx512_bf16 or amx_bf16, ARM without bf16) PyTorch emulates bf16 autocast, and a step can take
many times longer than in fp32 (measured: docs/robustness.md, "bf16 on a CPU without native
support"). The toolkit keeps what the user asked for and says so once, with the way to turn it
off: switching to fp32 behind the user's back would change the numbers of a run silently."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Any one of these CPU flags (/proc/cpuinfo) means native bf16 arithmetic.
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # x86 AVX-512, x86 AMX, ARMv8.6
# The CPU flags to assume instead of /proc/cpuinfo's, space-separated (a container that hides the
# host's flags; the tests of the slow-bf16 warning).
CPU_FLAGS_VARIABLE = "MAE_CPU_FLAGS"
_warned: set[str] = set()


def cpu_flags(cpuinfo: str | None = None) -> frozenset[str] | None:
    """The CPU's feature flags (x86 "flags", ARM "Features" lines of /proc/cpuinfo, or
    $MAE_CPU_FLAGS); None where they cannot be read (not Linux)."""
    if cpuinfo is None and CPU_FLAGS_VARIABLE in os.environ:
        return frozenset(os.environ[CPU_FLAGS_VARIABLE].split())
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def slow_bf16_message(flags: frozenset[str] | None, turn_off: str) -> str | None:
    """The warning for bf16 autocast on a CPU with these flags, or None when bf16 is native there
    (or the flags are unknown). `turn_off` says how this path trains in fp32 instead."""
    if flags is None or flags & NATIVE_BF16_FLAGS:
        return None
    return (
        "bf16 autocast was asked for, but this CPU has no native bf16 (none of the flags "
        f"{', '.join(sorted(NATIVE_BF16_FLAGS))}): PyTorch emulates it, and a step can take many times "
        "longer than in fp32 (measured: docs/robustness.md, \"bf16 on a CPU without native support\"). "
        f"To train in fp32, {turn_off}."
    )


def warn_if_bf16_is_slow(
    device: torch.device, turn_off: str, flags: frozenset[str] | None = None
) -> str | None:
    """Logs `slow_bf16_message` once per process for a CPU device (`flags` default to this CPU's);
    returns the message, or None when there is nothing to say."""
    if device.type != "cpu":
        return None
    message = slow_bf16_message(cpu_flags() if flags is None else flags, turn_off)
    if message and message not in _warned:
        _warned.add(message)
        log.warning("%s", message)
    return message
