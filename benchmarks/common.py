"""What every benchmark shares: the options' common base, the tolerances, the timing, the FLOP count and the
report writer (benchmarks.pretrain, benchmarks.backbone, benchmarks.demo_epoch, benchmarks.masking).

Timings on a shared machine drift over minutes (docs/benchmarks.md), so implementations are never timed one
after the other: each round runs every case once (in a rotating order) and the report takes the
median over rounds. Achieved FLOP/s are set against a plain matrix product timed as one more case
in the same rounds (`matmul_case`), the machine's practical limit at that moment."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from mae_app.flops import flop_count
from mae_core.precision import cpu_flags, warn_if_bf16_is_slow

REPO_ROOT = Path(__file__).resolve().parents[1]
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}

# One tolerance per compared quantity, each checked before anything is timed.
# MAE loss, toolkit vs Hugging Face, fp32, same weights and masking noise (absolute).
SAME_INPUT_LOSS_TOLERANCE = 1e-5
# The same in bf16, relative: bf16 rounding differs between the two op orders.
BF16_LOSS_TOLERANCE = 2e-2
# First-batch MAE loss, demo's old vs fast data path, same weights (relative): the two
# augmentations give crops within 2 uint8 levels of each other, not the same crops.
AUGMENTATION_LOSS_TOLERANCE = 1e-3
# Backbone outputs, toolkit vs Detectron2 / MMSegmentation, same weights (absolute).
OUTPUT_TOLERANCE = 1e-4


@dataclasses.dataclass
class BenchOptions:
    """What every benchmark's command line chooses. Each benchmark module extends it with its own
    fields (`benchmarks.pretrain.PretrainOptions`, `benchmarks.backbone.BackboneOptions`,
    `benchmarks.masking.MaskingOptions`, `benchmarks.demo_epoch.DemoEpochOptions`).

    Args:
        rounds: timed rounds; the report takes the median over them.
        threads: torch threads for every implementation in the process (None: torch's default).
        device: "cpu" or "cuda".
    """

    rounds: int = 3
    threads: int | None = None
    device: str = "cpu"


@dataclasses.dataclass
class MatmulReferenceOptions(BenchOptions):
    """Options of a benchmark that warms every case up and sets achieved FLOP/s against a matrix
    product timed in the same rounds (`matmul_case`).

    Args:
        warmup: untimed runs of every case before the rounds.
        matmul_size: n of the reference's (n x n) @ (n x n) products.
        matmul_reps: products per reference case.
    """

    warmup: int = 1
    matmul_size: int = 2048
    matmul_reps: int = 4


def reached(ok: bool) -> str:
    """A goal line's verdict."""
    return "reached" if ok else "NOT reached"


def forward_flops(model: torch.nn.Module, inputs: tuple) -> float | None:
    """FLOPs of one forward of `model(*inputs)` in eval mode (mae_app.flops, 2 per MAC); None, with
    a printed reason, for a model fvcore cannot trace (the report then shows n/a, never a guess)."""
    try:
        with torch.no_grad():
            return flop_count(model.eval(), inputs)[0]
    except Exception as exc:
        print(f"  fvcore could not count {type(model).__name__}: {type(exc).__name__}: {exc}")
        return None


def setup_threads(threads: int | None) -> int:
    """One thread count for every implementation in the process (default: all cores)."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def device_from_arg(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for, but torch sees no CUDA device")
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    """bf16 autocast (weights and master copies stay fp32), or nothing for fp32. bf16 on a CPU
    without native support is said to be slow, once (`mae_core.precision`)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        warn_if_bf16_is_slow(device, "time fp32 only (--precision fp32, or --precisions fp32)")
        return torch.autocast(device.type, dtype=torch.bfloat16)
    raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")


def progress(line: str) -> None:
    """A benchmark's progress line, on stdout at once even when it goes to a file."""
    print(line, flush=True)


def time_once(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_medians(
    cases: dict[str, Callable[[], object]],
    device: torch.device,
    rounds: int,
    warmup: int = 1,
    log: Callable[[str], None] | None = progress,
) -> dict[str, dict]:
    """Warm every case up, then `rounds` rounds that each run every case once, the order rotated
    per round so no case always follows the same neighbour. Returns median, min, max, all times
    and the first warm-up step's time. `log` gets a line as each case starts and ends, so a slow
    round (emulated bf16, a big model on a small CPU) shows where it is."""
    names = list(cases)
    say = log or (lambda line: None)
    first: dict[str, float] = {}
    for name in names:
        for i in range(warmup):
            say(f"  warm-up {i + 1}/{warmup}: {name} ...")
            seconds = time_once(cases[name], device)
            say(f"  warm-up {i + 1}/{warmup}: {name} {seconds:.3f}s")
            if i == 0:
                first[name] = seconds  # includes one-off costs, e.g. torch.compile

    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            say(f"  round {r + 1}/{rounds}: {name} ...")
            times[name].append(time_once(cases[name], device))
        say(f"  round {r + 1}/{rounds}: " + ", ".join(f"{n} {times[n][-1]:.3f}s" for n in names))
    return {
        name: {
            "median": statistics.median(t),
            "min": min(t),
            "max": max(t),
            "times": t,
            "first": first.get(name),
        }
        for name, t in times.items()
    }


def paired_ratio(numerator: dict, denominator: dict) -> float:
    """Median over rounds of time(numerator) / time(denominator) within the same round: the two
    ran back to back, so slow drift of the machine cancels out of each ratio."""
    return statistics.median(a / b for a, b in zip(numerator["times"], denominator["times"], strict=True))


def matmul_case(device: torch.device, dtype: torch.dtype, size: int = 2048,
                reps: int = 4) -> tuple[Callable[[], None], float]:
    """The matmul reference: a case running `reps` plain (n x n) @ (n x n) products, and its FLOPs
    (2 n^3 each), to be timed in the same rounds as the model cases."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)

    def run():
        for _ in range(reps):
            torch.mm(a, b, out=out)

    return run, reps * 2 * size**3


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    flags = " ".join(f for f in ("avx512_bf16", "amx_bf16", "avx512f", "avx2") if f in (cpu_flags() or ()))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu} ({os.cpu_count()} cores visible; {flags}), {gpu}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, python {platform.python_version()}"
    )


def peak_rss_gib() -> float:
    """Peak resident memory of this process so far. Linux's VmHWM starts afresh at exec, unlike
    ru_maxrss, which a child inherits from the (possibly large) parent that forked it."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_isolated(module: str, args: list[str], timeout: float | None = None) -> dict:
    """Runs `python -m module args` in a fresh interpreter that prints one JSON line last, so each
    case's peak memory is its own (a process's peak never goes down)."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)



def write_report(sections: list[str], results: list[dict], command: str, json_path: Path | None) -> str:
    """The one report of every benchmark: the machine and the command, then `sections` (tables,
    goal lines); printed, and with `json_path` written there with the raw results."""
    text = "\n".join([f"Machine: {machine_description()}", f"Command: {command}", *sections])
    if json_path:
        json_path.write_text(json.dumps({"results": results, "report": text}, indent=1, default=str))
    print("\n" + text)
    return text
