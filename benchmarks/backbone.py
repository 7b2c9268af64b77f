"""Backbone benchmark (tools/bench_backbone.py is its command line): the toolkit's ViT backbone +
simple feature pyramid against Detectron2's `ViT` + `SimpleFeaturePyramid` (ViTDet, ViT-B, 14x14
windows, global blocks 2/5/8/11, relative positions on), and the toolkit's segmentation backbone
in MMSegmentation's layout (cls token in attention, BEiT's relative-position table, layer scale,
out_indices 3/5/7/11) against MMSegmentation's `MAE`.

Same weights are copied across (Detectron2's through detection's converter, MMSegmentation's
through mae_core.checkpoint.load_pretrained; relative-position tables random, not zero) and
outputs must agree within 1e-4 before anything is timed. The detection suite can also time the
toolkit with each decomposed rel-pos attention path forced (`BackboneOptions.attention_paths`, cases
`toolkit:fused`, `toolkit:chunked`; plain `toolkit` is the path `choose_rel_pos_path` picks). Times are
medians of interleaved rounds in one process; peak memory is measured per case in a fresh
process (`python -m benchmarks.backbone SUITE IMPL SIZE MODE`; a process peak never goes down),
as the step's peak resident memory above the process's resident memory after building the model.

FLOPs: benchmarks.common.forward_flops on the forward of the same architecture without relative positions (the
plain ViT + pyramid FLOPs, identical for both implementations); forward+backward counts 3x forward."""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from benchmarks.common import (
    OUTPUT_TOLERANCE,
    PRECISION_DTYPES,
    MatmulReferenceOptions,
    autocast,
    device_from_arg,
    forward_flops,
    interleaved_medians,
    markdown_table,
    matmul_case,
    paired_ratio,
    peak_rss_gib,
    reached,
    run_isolated,
    setup_threads,
    synchronize,
)
from mae_core.backbone import VITDET_GLOBAL_BLOCKS, ViTBackbone, create_backbone
from mae_core.checkpoint import load_pretrained
from mae_core.host_memory import retain_freed_memory
from mae_core.layers import set_rel_pos_path
from mae_core.pyramid import SimpleFeaturePyramid

ARCH = "vit_base_patch16"
SEG_OUT_INDICES = (3, 5, 7, 11)
# The goals the report checks: speed against the framework's own backbone (1.1x for det at 1024 px,
# where the chunked attention trades speed for memory; 1.3x elsewhere), and Detectron2
# forward+backward peak memory above the model (at 1024 px).
GOAL_SPEEDUP_VS_PEER = 1.30
GOAL_DET_1024_SPEEDUP = 1.10
GOAL_DET_MEMORY_RATIO = 0.70


@dataclass
class BackboneOptions(MatmulReferenceOptions):
    """tools/bench_backbone.py's choices, beyond the common ones.

    Args:
        precision: "fp32" or "bf16" (autocast) for every case.
        batch: images per forward.
        modes: "fwd" (inference) and/or "fwdbwd" (forward + backward).
        memory: also measure each case's peak memory in a fresh process.
        attention_paths: det suite: also time the toolkit with these rel-pos paths forced
            (`mae_core.layers.REL_POS_PATHS`).
        retain_host_memory: keep freed host memory mapped (`mae_core.host_memory`), as pretraining
            does with `retain_host_memory`; both implementations alike.
    """

    precision: str = "fp32"
    batch: int = 1
    modes: list[str] = field(default_factory=lambda: ["fwd", "fwdbwd"])
    memory: bool = True
    attention_paths: tuple[str, ...] = ()
    retain_host_memory: bool = False


def speed_goal(suite: str, size: int) -> float:
    return GOAL_DET_1024_SPEEDUP if (suite, size) == ("det", 1024) else GOAL_SPEEDUP_VS_PEER


class ToolkitDet(nn.Module):
    """mae_core backbone + pyramid with the parameter names of detection.backbone.ViTDetBackbone, so
    detection's Detectron2 key converter applies (kept here so mae_core alone is measured)."""

    def __init__(self, size: int, use_rel_pos: bool = True):
        super().__init__()
        self.net = create_backbone(ARCH, vitdet_windows=True, use_rel_pos=use_rel_pos, img_size=size)
        self.pyramid = SimpleFeaturePyramid(self.net.embed_dim, self.net.patch_size, 256)

    def forward(self, x):
        return self.pyramid(self.net(x)[-1])


def detectron2_vitdet(size: int) -> nn.Module:
    from detectron2.modeling import SimpleFeaturePyramid as D2Pyramid
    from detectron2.modeling import ViT
    from detectron2.modeling.backbone.fpn import LastLevelMaxPool

    globals_ = VITDET_GLOBAL_BLOCKS[ARCH]
    vit = ViT(
        img_size=size,
        patch_size=16,
        embed_dim=768,
        depth=12,
        num_heads=12,
        drop_path_rate=0.0,
        window_size=14,
        mlp_ratio=4,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        window_block_indexes=[i for i in range(12) if i not in globals_],
        residual_block_indexes=[],
        use_rel_pos=True,
        out_feature="last_feat",
        pretrain_img_size=224,
    )
    return D2Pyramid(
        vit,
        in_feature="last_feat",
        out_channels=256,
        scale_factors=(4.0, 2.0, 1.0, 0.5),
        top_block=LastLevelMaxPool(),
        norm="LN",
        square_pad=size,
    )


def toolkit_seg(size: int, rel_pos_bias: bool = True) -> ViTBackbone:
    """The segmentation backbone (segmentation.MAEViT is this class registered in mmseg) in
    MMSegmentation's `MAE` layout: cls token in attention, BEiT's relative-position table, layer
    scale, so that converted weights give MMSegmentation's outputs."""
    return create_backbone(
        ARCH,
        img_size=size,
        pretrain_img_size=size,
        out_indices=SEG_OUT_INDICES,
        cls_token_in_attention=True,
        rel_pos_bias=rel_pos_bias,
        init_values=0.1,
    )


def mmseg_mae(size: int) -> nn.Module:
    try:
        from mmseg.models.backbones import MAE
    except ImportError as exc:
        raise SystemExit(
            f"error: MMSegmentation is not importable ({exc}); install it with `make setup` "
            "or run with --suites det"
        ) from exc
    return MAE(
        img_size=size,
        patch_size=16,
        embed_dims=768,
        num_layers=12,
        num_heads=12,
        mlp_ratio=4,
        out_indices=list(SEG_OUT_INDICES),
        norm_cfg=dict(type="LN", eps=1e-6),
        init_values=0.1,
    )


def randomise_(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial weights everywhere, relative-position tables included (they start at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            std = 0.02 if p.ndim > 1 or "rel_pos" in name or "pos_embed" in name else 0.1
            base = 1.0 if name.endswith("weight") and p.ndim == 1 else 0.0
            p.copy_(base + std * torch.randn(p.shape, generator=gen))


def build_pair(suite: str, size: int) -> tuple[nn.Module, nn.Module]:
    """(toolkit, peer) with the same weights."""
    if suite == "det":
        from detection.backbone import from_detectron2_vitdet

        peer = detectron2_vitdet(size)
        randomise_(peer)
        ours = ToolkitDet(size)
        ours.load_state_dict(from_detectron2_vitdet(peer.state_dict()), strict=True)
        return ours, peer
    peer = mmseg_mae(size)
    randomise_(peer)
    ours = toolkit_seg(size)
    load_pretrained(ours, peer.state_dict())  # complete or raises, naming the keys
    return ours, peer


def outputs_list(out) -> list[torch.Tensor]:
    return list(out.values()) if isinstance(out, dict) else list(out)


def compare_outputs(ours, peer, x) -> float:
    with torch.no_grad():
        a, b = outputs_list(ours(x)), outputs_list(peer(x))
    if len(a) != len(b) or any(u.shape != v.shape for u, v in zip(a, b, strict=True)):
        raise RuntimeError(f"output shapes differ: {[u.shape for u in a]} vs {[v.shape for v in b]}")
    return max((u - v).abs().max().item() for u, v in zip(a, b, strict=True))


def make_case(model, x, mode: str, device, precision: str):
    def fwd():
        with torch.no_grad(), autocast(device, precision):
            model(x)

    def fwdbwd():
        with autocast(device, precision):
            loss = sum(o.float().mean() for o in outputs_list(model(x)))
        loss.backward()
        model.zero_grad(set_to_none=True)

    return fwd if mode == "fwd" else fwdbwd


def plain_forward_flops(suite: str, size: int) -> float | None:
    """The FLOPs both implementations share: the plain ViT-B + pyramid, relative positions off."""
    model = ToolkitDet(size, use_rel_pos=False) if suite == "det" else toolkit_seg(size, rel_pos_bias=False)
    return forward_flops(model, (torch.randn(1, 3, size, size),))


WORKER_BUILDERS = {
    ("det", "toolkit"): ToolkitDet,
    ("det", "detectron2"): detectron2_vitdet,
    ("seg", "toolkit"): toolkit_seg,
    ("seg", "mmseg"): mmseg_mae,
}


def build_impl(suite: str, impl: str, size: int) -> nn.Module:
    """`impl` is a WORKER_BUILDERS name, or `toolkit:PATH` for the toolkit with a forced path."""
    base, _, path = impl.partition(":")
    model = WORKER_BUILDERS[suite, base](size)
    if path:
        set_rel_pos_path(model, path)
    return model


def prepare_process(opts: BackboneOptions) -> torch.device:
    """This process's torch threads and host allocator as `opts` asks; the device to run on. The
    same for the timing process and every memory process."""
    setup_threads(opts.threads)
    if opts.retain_host_memory:
        retain_freed_memory()
    return device_from_arg(opts.device)


def worker(suite: str, impl: str, size: int, mode: str, opts: BackboneOptions) -> dict:
    """One case's step peak memory, measured in this (fresh) process."""
    device = prepare_process(opts)
    # Weights do not change memory use: build only the one model, so the build's own peak
    # (two models, converted copies) stays below the step's.
    model = build_impl(suite, impl, size).to(device)
    model.train()  # not chained: MMSegmentation's BEiT.train() returns None
    x = torch.randn(opts.batch, 3, size, size, device=device)
    step = make_case(model, x, mode, device, opts.precision)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2**30
    else:
        before = peak_rss_gib()
    start = time.perf_counter()
    step()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else peak_rss_gib()
    return {"peak_gib": peak, "before_gib": before, "step_peak_gib": peak - before, "seconds": seconds}


def measure_memory(suite: str, size: int, impls: tuple[str, ...], opts: BackboneOptions) -> dict:
    """Every (implementation, mode) case's peak memory, each in its own process."""
    memory = {}
    extra = ["--device", opts.device, "--precision", opts.precision, "--batch", str(opts.batch)]
    if opts.threads:
        extra += ["--threads", str(opts.threads)]
    if opts.retain_host_memory:
        extra.append("--retain-host-memory")
    for mode in opts.modes:
        for impl in impls:
            mem = run_isolated("benchmarks.backbone", [suite, impl, str(size), mode, *extra])
            memory[f"{impl}/{mode}"] = mem
            print(f"  peak memory {impl}/{mode}: {mem['step_peak_gib']:.2f} GiB "
                  f"above the model ({mem['peak_gib']:.2f} GiB process peak)")
    return memory


def toolkit_variants(suite: str, ours: nn.Module, opts: BackboneOptions) -> dict[str, nn.Module]:
    """"toolkit" (paths as chosen) and, for det, one copy per forced rel-pos attention path."""
    variants = {"toolkit": ours}
    for path in opts.attention_paths if suite == "det" else ():
        variants[f"toolkit:{path}"] = copy.deepcopy(ours)
        set_rel_pos_path(variants[f"toolkit:{path}"], path)
    return variants


def bench_suite(suite: str, size: int, opts: BackboneOptions, device: torch.device) -> dict:
    """Outputs compared (stops unless equal), FLOPs counted, the implementations and the matmul
    reference timed in interleaved rounds, and (unless switched off) the peak memory of every case."""
    peer_name = "detectron2" if suite == "det" else "mmseg"
    print(f"\n== {suite} at {size}: toolkit vs {peer_name}, batch {opts.batch}, {opts.precision}")
    torch.manual_seed(0)
    ours, peer = build_pair(suite, size)
    ours.to(device).train()
    peer.to(device).train()
    variants = toolkit_variants(suite, ours, opts)
    x = torch.randn(opts.batch, 3, size, size, device=device)
    diffs = {name: compare_outputs(model, peer, x) for name, model in variants.items()}
    for name, d in diffs.items():
        print(f"  {name} vs {peer_name}: max |output difference| {d:.2e} (tolerance {OUTPUT_TOLERANCE:.0e})")
    diff = max(diffs.values())
    if diff > OUTPUT_TOLERANCE:
        raise SystemExit(f"error: {suite} at {size}: outputs differ from {peer_name}'s by {diff:.2e} "
                         f"(> {OUTPUT_TOLERANCE:.0e}); nothing timed")
    fwd_flops = plain_forward_flops(suite, size)
    fwd_flops = fwd_flops * opts.batch if fwd_flops else None
    cases = {}
    for mode in opts.modes:
        for name, model in variants.items():
            cases[f"{name}/{mode}"] = make_case(model, x, mode, device, opts.precision)
        cases[f"{peer_name}/{mode}"] = make_case(peer, x, mode, device, opts.precision)
    cases["matmul"], matmul_flops = matmul_case(device, PRECISION_DTYPES[opts.precision],
                                                opts.matmul_size, opts.matmul_reps)
    timings = interleaved_medians(cases, device, rounds=opts.rounds, warmup=opts.warmup)
    impls = (*variants, peer_name)
    memory = measure_memory(suite, size, impls, opts) if opts.memory else {}
    return {"suite": suite, "size": size, "peer": peer_name, "impls": impls, "max_output_diff": diff,
            "forward_flops": fwd_flops, "timings": timings,
            "matmul_flops_per_s": matmul_flops / timings["matmul"]["median"], "memory": memory}


def suite_rows(r: dict, mode: str) -> tuple[list, list[str]]:
    """One result's table rows for `mode` and its goal lines."""
    t, mm, peer = r["timings"], r["matmul_flops_per_s"], r["peer"]
    flops = r["forward_flops"] and r["forward_flops"] * (1 if mode == "fwd" else 3)
    rows = []
    for impl in r["impls"]:
        med = t[f"{impl}/{mode}"]["median"]
        mem = r["memory"].get(f"{impl}/{mode}")
        ratio = paired_ratio(t[f"{peer}/{mode}"], t[f"{impl}/{mode}"])
        rows.append([r["suite"], r["size"], mode, impl, f"{med:.3f}",
                     f"{t[f'{impl}/{mode}']['min']:.3f}-{t[f'{impl}/{mode}']['max']:.3f}", f"{ratio:.2f}x",
                     f"{100 * flops / med / mm:.0f}%" if flops else "n/a",
                     f"{mem['step_peak_gib']:.2f}" if mem else "-", f"{mem['peak_gib']:.2f}" if mem else "-"])
    speedup = paired_ratio(t[f"{peer}/{mode}"], t[f"toolkit/{mode}"])
    equal = "equal" if r["max_output_diff"] <= OUTPUT_TOLERANCE else "NOT equal"
    goal = speed_goal(r["suite"], r["size"])
    goals = [f"- {r['suite']} {r['size']} {mode}: toolkit {speedup:.2f}x {peer} (goal >= "
             f"{goal:.2f}x: {reached(speedup >= goal)}); max |output diff| "
             f"{r['max_output_diff']:.1e} ({equal} within {OUTPUT_TOLERANCE:.0e})"]
    ours_mem, peer_mem = r["memory"].get(f"toolkit/{mode}"), r["memory"].get(f"{peer}/{mode}")
    if ours_mem and peer_mem and mode == "fwdbwd" and peer_mem["step_peak_gib"] > 0 and r["suite"] == "det":
        ratio = ours_mem["step_peak_gib"] / peer_mem["step_peak_gib"]
        goals.append(f"- {r['suite']} {r['size']} fwdbwd peak memory above the model: {ratio:.2f}x {peer}'s "
                     f"(goal at 1024 <= {GOAL_DET_MEMORY_RATIO:.2f}x: "
                     f"{reached(ratio <= GOAL_DET_MEMORY_RATIO)})")
    return rows, goals


HEADER = ["suite", "size", "mode", "implementation", "s (median)", "min-max",
          "peer time / this (median of per-round ratios)", "% of matmul FLOP/s",
          "step peak GiB (above model)",
          "process peak GiB"]


def report_sections(results: list[dict], opts: BackboneOptions) -> list[str]:
    """The table and goal lines of `results`, for benchmarks.common.write_report."""
    rows, goals = [], []
    for r in results:
        for mode in opts.modes:
            mode_rows, mode_goals = suite_rows(r, mode)
            rows += mode_rows
            goals += mode_goals
    matmul = ", ".join(f"{r['suite']} {r['size']}: {r['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s"
                       for r in results)
    return [
        f"{opts.precision}, batch {opts.batch}, {opts.rounds} rounds after {opts.warmup} warm-up, "
        "medians; "
        "FLOPs = plain ViT-B + pyramid (fvcore, 2 per MAC), fwd+bwd = 3x fwd; host allocator: "
        + ("freed memory retained (mae_core.host_memory)" if opts.retain_host_memory else "glibc defaults"),
        "",
        markdown_table(HEADER, rows),
        "",
        f"Matmul reference ({opts.matmul_size}^3, same rounds): {matmul}",
        "",
        "Goals:",
        *goals,
    ]


if __name__ == "__main__":  # one memory case: SUITE IMPL SIZE MODE [--device ...]
    p = argparse.ArgumentParser()
    p.add_argument("suite")
    p.add_argument("impl")
    p.add_argument("size", type=int)
    p.add_argument("mode")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--retain-host-memory", action="store_true")
    a = p.parse_args()
    opts = BackboneOptions(precision=a.precision, batch=a.batch, threads=a.threads, device=a.device,
                           modes=[a.mode], retain_host_memory=a.retain_host_memory)
    print(json.dumps(worker(a.suite, a.impl, a.size, a.mode, opts)))
    sys.exit(0)
