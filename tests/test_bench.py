"""The benchmarks' own machinery: FLOP counting, interleaving, the numerics checks that must
pass before anything is timed, and each tools/bench_*.py end to end at toy size with its options."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.common import interleaved_medians, paired_ratio
from mae_app.flops import flop_count

REPO = Path(__file__).resolve().parents[1]


class _Attend(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_flop_count_counts_linear_and_attention_as_two_per_multiply_accumulate():
    flops, _ = flop_count(nn.Linear(8, 5, bias=False), (torch.randn(3, 8),))
    assert flops == 2 * 3 * 8 * 5
    b, h, nq, nk, d = 2, 3, 7, 11, 4
    q, k, v = torch.randn(b, h, nq, d), torch.randn(b, h, nk, d), torch.randn(b, h, nk, d)
    flops, _ = flop_count(_Attend(), (q, k, v))
    assert flops == 2 * b * h * nq * nk * (d + d)  # q.k^T and attn.v


def test_interleaved_rounds_rotate_the_order_and_pair_ratios_by_round():
    calls = []
    cases = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    result = interleaved_medians(cases, torch.device("cpu"), rounds=3, warmup=1, log=None)
    assert calls[:3] == ["a", "b", "c"]  # warm-up
    assert calls[3:] == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert all(len(r["times"]) == 3 and r["first"] is not None for r in result.values())
    slow, fast = {"times": [4.0, 9.0, 6.0]}, {"times": [2.0, 3.0, 3.0]}
    assert paired_ratio(slow, fast) == 2.0  # per-round ratios 2, 3, 2


def test_interleaved_rounds_say_which_case_runs_before_it_runs():
    """A round of slow cases (emulated bf16 on a small CPU) shows progress: a line as each case
    starts, so the last line names the case the benchmark is in."""
    lines = []
    cases = {name: (lambda n=name: lines.append(f"ran {n}")) for name in "ab"}
    interleaved_medians(cases, torch.device("cpu"), rounds=2, warmup=1, log=lines.append)
    started = [line for line in lines if line.endswith("...") or line.startswith("ran")]
    assert started == ["  warm-up 1/1: a ...", "ran a", "  warm-up 1/1: b ...", "ran b",
                       "  round 1/2: a ...", "ran a", "  round 1/2: b ...", "ran b",
                       "  round 2/2: b ...", "ran b", "  round 2/2: a ...", "ran a"]


@pytest.mark.slow
def test_toolkit_and_hugging_face_losses_agree_before_timing():
    from benchmarks.pretrain import CONFIGS, build_models, check_numerics

    models = build_models(CONFIGS["tiny"], with_hf=True)
    imgs, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 64)
    rows = check_numerics(models, imgs, noise, torch.device("cpu"), ["fp32"])
    assert rows[0]["ok"] and rows[0]["loss_diff"] <= 1e-5
    with torch.no_grad():  # the check is sensitive: a 10% change in one layer is caught
        models["toolkit"].blocks[0].attn.qkv.weight.mul_(1.1)
    assert not check_numerics(models, imgs, noise, torch.device("cpu"), ["fp32"])[0]["ok"]


# Each benchmark tool at toy size, and the report lines that show its own options reached the
# benchmark (rounds, warm-up, steps, batch, precision, the matmul reference's size).
BENCH_RUNS = {
    "masking": (["--strategies", "random,hard_patches", "--rounds", "1", "--steps", "2", "--batch", "4",
                 "--img-size", "16"], ["1 rounds x 2 steps, batch 4, medians", "| hard_patches |"]),
    "pretrain": (["--configs", "tiny", "--precisions", "fp32", "--rounds", "1", "--warmup", "2", "--no-hf",
                  "--skip-flops", "--matmul-size", "64"],
                 ["Rounds: 1 (after 2 warm-up step(s))", "| tiny | fp32 | toolkit_mask_tokens |",
                  "| tiny | fp32 | 64 |"]),
    "backbone": (["--suites", "seg", "--seg-size", "64", "--modes", "fwd", "--rounds", "1", "--batch", "2",
                  "--no-memory"],
                 ["fp32, batch 2, 1 rounds after 1 warm-up", "| seg | 64 | fwd | mmseg |",
                  "Matmul reference (2048^3"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BENCH_RUNS))
def test_bench_tool_runs_with_its_options(name, tmp_path):
    args, lines = BENCH_RUNS[name]
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(REPO / f"tools/bench_{name}.py"), *args, "--threads", "1",
                          "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(out.read_text())["report"]
    for line in lines:
        assert line in report


@pytest.mark.slow
def test_bench_demo_epoch_runs_both_paths_with_its_options(tmp_path):
    from mae_app.demo_data import DemoDataSpec, build_demo_data

    spec = DemoDataSpec(train_scenes=1, val_scenes=1, heldout_scenes=1, pretrain_images=128,
                        cls_train_per_class=1, cls_val_per_class=1)
    data = build_demo_data(tmp_path / "demo", spec) / "pretrain"
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(REPO / "tools/bench_demo_epoch.py"), "--data", str(data),
                          "--steps", "1", "--rounds", "1", "--threads", "1", "--json", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())["results"][0]
    assert result["steps"] == 1 and result["threads"] == 1
    assert {name: len(times) for name, times in result["times"].items()} == {"old": 1, "fast": 1}
