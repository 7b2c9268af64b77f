"""The slow-bf16 warning: which CPUs get it (both branches, from given CPU flags), and that it is
said once per process."""

from __future__ import annotations

import logging

import torch

from mae_core import precision
from mae_core.precision import cpu_flags, slow_bf16_message, warn_if_bf16_is_slow

# /proc/cpuinfo excerpts: an AVX2-only AMD EPYC, a Zen 4 with avx512_bf16, an Intel Xeon with AMX,
# an ARM Neoverse with bf16.
AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\nmodel name\t: AMD EPYC\n"
ZEN4 = "flags\t\t: fpu avx2 avx512f avx512_bf16\n"
XEON_AMX = "flags\t\t: fpu avx2 avx512f amx_tile amx_bf16\n"
NEOVERSE = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_cpu_flags_are_read_from_x86_and_arm_cpuinfo():
    assert cpu_flags(AVX2_ONLY) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert "bf16" in cpu_flags(NEOVERSE)
    assert cpu_flags("processor\t: 0\n") is None


def test_only_a_cpu_without_native_bf16_is_warned_about():
    message = slow_bf16_message(cpu_flags(AVX2_ONLY), "set amp=none")
    assert "no native bf16" in message and "docs/robustness.md" in message
    assert message.endswith("set amp=none.")
    for native in (ZEN4, XEON_AMX, NEOVERSE):
        assert slow_bf16_message(cpu_flags(native), "set amp=none") is None
    assert slow_bf16_message(None, "set amp=none") is None  # flags unknown: nothing claimed


def test_the_warning_is_logged_once_per_process_and_never_for_a_gpu(caplog, monkeypatch):
    monkeypatch.setattr(precision, "_warned", set())
    flags = cpu_flags(AVX2_ONLY)
    with caplog.at_level(logging.WARNING, logger="mae_core.precision"):
        assert warn_if_bf16_is_slow(torch.device("cpu"), "set amp=none", flags)
        assert warn_if_bf16_is_slow(torch.device("cpu"), "set amp=none", flags)
        assert warn_if_bf16_is_slow(torch.device("cuda", 0), "set amp=none", flags) is None
    assert [r.message for r in caplog.records].count(slow_bf16_message(flags, "set amp=none")) == 1


def test_the_flags_can_be_given_in_the_environment(monkeypatch):
    monkeypatch.setenv(precision.CPU_FLAGS_VARIABLE, "fpu avx2")
    assert cpu_flags() == {"fpu", "avx2"}
