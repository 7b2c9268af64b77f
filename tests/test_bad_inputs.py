"""What the toolkit does with bad input: one row per case, each running a real tool (or library
entry point) on a deliberately bad input and asserting that it stops with a non-zero exit and a
message naming what is at fault (the file, key, step or value). README, "On bad input", states
the promise these rows check.

A row is a function `(tmp_path) -> Case`, registered with `@bad_input`; it builds the bad input in
`tmp_path` and says which command to run and what the output must name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass
class Case:
    cmd: list[str]  # run from the repository root
    names: list[str]  # substrings the combined stdout+stderr must contain (file, key, step, value)
    exit_code: int | None = None  # None: any non-zero exit
    absent: list[str] = field(default_factory=list)  # substrings that must NOT appear (e.g. a metric)
    check: Callable[[], None] | None = None  # extra assertions on files after the run
    timeout: int = 600


ROWS: dict[str, Callable[[Path], Case]] = {}


def bad_input(name: str):
    def register(fn: Callable[[Path], Case]):
        assert name not in ROWS, f"duplicate bad-input row {name}"
        ROWS[name] = fn
        return fn

    return register


def tool(name: str, *args) -> list[str]:
    return [PY, str(REPO / "tools" / name), *map(str, args)]


# ---------------------------------------------------------------- rows: pretraining

# A tiny pretraining run: 8 Fashion-MNIST images (one optimizer step of 8 per epoch), a one-block decoder.
TOY_PRETRAIN = [
    "data.limit=8", "data.num_workers=0", "batch_size=8", "effective_batch=8", "epochs=1", "log_every=1",
    "save_every=1", "model.decoder_embed_dim=32", "model.decoder_depth=1", "model.decoder_num_heads=2",
]
TOY_CONFIG = "configs/pretrain/fashion_mnist_toy.py"
INFINITE_LR = "optim.lr=1e309"  # inf: the first update makes every weight non-finite, deterministically


def pretrain_cmd(out: Path, *args) -> list[str]:
    from helpers_pretrain import require_fashion_mnist

    require_fashion_mnist()
    return tool("pretrain.py", "--config", TOY_CONFIG, f"output_dir={out}", *TOY_PRETRAIN, *args)


def run_setup(cmd: list[str]) -> None:
    """A command that builds the input of a row; it must succeed."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"setup {cmd} failed:\n{(proc.stdout + proc.stderr)[-3000:]}"


def log_records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def assert_checkpoints_finite(out: Path) -> list[Path]:
    """Every checkpoint under a real name loads and holds finite weights and optimizer state."""
    import torch

    from mae_core.checkpoint import non_finite_tensors
    from mae_core.engine import previous_checkpoints

    paths = previous_checkpoints(out)
    for path in paths:
        state = torch.load(path, weights_only=True)
        bad = non_finite_tensors({"model": state["model"], "optimizer": state["optimizer"]})
        assert not bad, f"{path} holds {len(bad)} non-finite tensors: {bad[:5]}"
    return paths


@bad_input("pretrain_nan_loss_names_the_iteration_as_log_jsonl_counts")
def _(tmp_path):
    """Two steps: the first loss is finite (initial weights) and its update makes the weights
    infinite, so the second loss is NaN: iteration 2 in log.jsonl's numbering."""
    out = tmp_path / "run"

    def check():
        assert [r["iteration"] for r in log_records(out)] == [1]
        assert assert_checkpoints_finite(out) == []

    return Case(pretrain_cmd(out, "data.limit=16", INFINITE_LR), exit_code=1, check=check,
                names=["loss is nan at epoch 0, iteration 2 (counted from 1, as in log.jsonl; step 2 of 2"])


@bad_input("pretrain_nan_gradient_norm_names_the_iteration")
def _(tmp_path):
    """With clipping the gradient norm is computed anyway, and checked (before the loss)."""
    return Case(pretrain_cmd(tmp_path / "run", "data.limit=16", "optim.clip_grad=1.0", INFINITE_LR),
                exit_code=1, names=["gradient norm is nan at epoch 0, iteration 2 (counted from 1"])


@bad_input("pretrain_divergence_on_an_epochs_last_step_keeps_last_pth_finite")
def _(tmp_path):
    """The issue's case: epoch 0 is good and saved; epoch 1's only (so last) step has a finite
    loss, and its update makes the weights infinite. last.pth must stay epoch 0's."""
    out = tmp_path / "run"
    run_setup(pretrain_cmd(out))
    good = (out / "last.pth").read_bytes()

    def check():
        assert (out / "last.pth").read_bytes() == good
        assert [p.name for p in assert_checkpoints_finite(out)] == ["checkpoint-0001.pth", "last.pth"]
        assert (out / "diverged-000002.pth").is_file()

    return Case(pretrain_cmd(out, "--resume", "epochs=2", INFINITE_LR), exit_code=1, check=check,
                names=["At the end of epoch 1, after iteration 2 (counted from 1",
                       "floating-point tensors are non-finite (NaN or infinity)",
                       "model.patch_embed.proj.weight", f"the last good checkpoint is {out / 'last.pth'}",
                       "nothing was saved under last.pth"])


@bad_input("pretrain_mask_ratio_leaving_no_visible_patch")
def _(tmp_path):
    out = tmp_path / "run"

    def check():
        assert not out.exists()  # refused at configuration time: nothing written

    return Case(pretrain_cmd(out, "model.mask_ratio=0.99"), exit_code=1, check=check,
                names=["mask_ratio 0.99 on the 7x7 patch grid leaves 0 visible and 49 masked"])


@bad_input("visualize_mae_mask_ratio_leaving_no_masked_patch")
def _(tmp_path):
    from mae_core.checkpoint import save_checkpoint
    from mae_core.config import ModelConfig
    from mae_core.engine import mae_from_record, model_record

    record = model_record(ModelConfig(arch="vit_toy_patch4", img_size=28, in_chans=1, decoder_embed_dim=32,
                                      decoder_depth=1, decoder_num_heads=2))
    state = {"model": mae_from_record(record).state_dict(), "arch": record}
    ckpt = save_checkpoint(state, tmp_path / "mae.pth")
    return Case(tool("visualize_mae.py", ckpt, "--mask-ratio", "0.0", "--output-dir", tmp_path / "pics"),
                exit_code=1, names=["mask_ratio 0.0 on the 7x7 patch grid leaves 49 visible and 0 masked"])


@bad_input("pretrain_into_a_folder_holding_another_runs_checkpoint")
def _(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint-0004.pth").write_bytes(b"another run")
    (out / "config.json").write_text('{"another": "run"}\n')

    def check():
        assert (out / "checkpoint-0004.pth").read_bytes() == b"another run"
        assert (out / "config.json").read_text() == '{"another": "run"}\n'
        assert sorted(p.name for p in out.iterdir()) == ["checkpoint-0004.pth", "config.json"]

    return Case(pretrain_cmd(out), exit_code=1, check=check,
                names=[f"{out} holds another run's checkpoints (checkpoint-0004.pth)", "--resume",
                       "--overwrite"])


@bad_input("pretrain_overwrite_replaces_the_previous_run")
def _(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint-0004.pth").write_bytes(b"another run")
    (out / "log.jsonl").write_text('{"epoch": 3, "iteration": 4, "loss": 0.5, "lr": 0.1}\n')

    def check():
        assert [p.name for p in assert_checkpoints_finite(out)] == ["checkpoint-0001.pth", "last.pth"]
        assert [r["iteration"] for r in log_records(out)] == [1, 1]  # the step line and the epoch line

    return Case(pretrain_cmd(out, "--overwrite"), exit_code=0, check=check,
                names=["deleted the previous run's checkpoint-0004.pth"])


@bad_input("pretrain_resume_with_nothing_to_resume_starts_fresh_and_says_so")
def _(tmp_path):
    """`--resume` before the key=value overrides (argparse would take the next one as its path)."""
    out = tmp_path / "run"
    from helpers_pretrain import require_fashion_mnist

    require_fashion_mnist()
    cmd = tool("pretrain.py", "--config", TOY_CONFIG, "--resume", f"output_dir={out}", *TOY_PRETRAIN)
    return Case(cmd, exit_code=0, check=lambda: assert_checkpoints_finite(out),
                names=[f"nothing to resume: {out / 'last.pth'} does not exist; starting a fresh run"])


@bad_input("pretrain_resume_after_a_kill_logs_each_step_once")
def _(tmp_path):
    """A run killed after writing epoch 1's log lines but before its checkpoint: last.pth is epoch
    0's. The resumed run must drop the killed run's lines past iteration 1, not repeat them."""
    out = tmp_path / "run"
    run_setup(pretrain_cmd(out, "epochs=2"))
    (out / "last.pth").write_bytes((out / "checkpoint-0001.pth").read_bytes())
    (out / "checkpoint-0002.pth").unlink()

    def check():
        records = log_records(out)
        steps_and_epochs = [(r["iteration"], "loss" in r) for r in records]
        assert steps_and_epochs == [(1, True), (1, False), (2, True), (2, False)]

    return Case(pretrain_cmd(out, "--resume", "epochs=2"), exit_code=0, check=check,
                names=["dropped 2 records past iteration 1"])


@bad_input("pretrain_override_typo_names_the_closest_key")
def _(tmp_path):
    return Case(pretrain_cmd(tmp_path / "out", "optim.blrr=1e-3"), exit_code=1,
                names=["'optim.blrr'", "closest existing keys: optim.blr"],
                check=lambda: _assert_nothing_written(tmp_path / "out"))


def truncated_checkpoint(path: Path) -> Path:
    """A torch checkpoint cut off after 300 bytes, as a killed copy leaves it."""
    import torch

    torch.save({"model": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])
    return path


@bad_input("pretrain_resume_from_a_truncated_checkpoint")
def _(tmp_path):
    bad = truncated_checkpoint(tmp_path / "cut.pth")
    return Case(pretrain_cmd(tmp_path / "out", "--resume", bad), exit_code=1, names=[str(bad)])


@bad_input("visualize_mae_truncated_checkpoint")
def _(tmp_path):
    bad = truncated_checkpoint(tmp_path / "cut.pth")
    return Case(tool("visualize_mae.py", bad, "--output-dir", tmp_path / "pics"), exit_code=1,
                names=[str(bad)])


@bad_input("eval_cls_checkpoint_of_another_architecture")
def _(tmp_path):
    from helpers_pretrain import write_image

    from mae_core.checkpoint import save_checkpoint
    from mae_core.mae import create_mae

    for split in ("train", "val"):
        for label in ("a", "b"):
            write_image(tmp_path / "cls" / split / label / "0.png", size=(32, 32))
    other = create_mae("vit_mini_patch4", img_size=32)  # 128 wide: no tensor fits the 96-wide toy
    ckpt = save_checkpoint({"model": other.state_dict()}, tmp_path / "mini.pth")
    return Case(tool("eval_cls.py", "--data", tmp_path / "cls", "--backbone", "vit_mae", "--checkpoint", ckpt,
                     "--arch", "vit_toy_patch4", "--img-size", "32", "--mode", "knn"),
                names=[str(ckpt), "blocks.0"], absent=["accuracy"])


def _assert_nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.iterdir()), f"{out} holds {sorted(out.iterdir())}"


# ---------------------------------------------------------------- rows: detection

DET_TINY = REPO / "configs" / "detection" / "mask_rcnn_vit_tiny_cpu.py"


def det_data(root: Path, edit: Callable[[dict], None] | None = None) -> list[str]:
    """Overrides pointing the tiny detection config at a generated COCO set in `root` (4 training,
    2 validation images); `edit` may spoil the training json first."""
    from helpers_coco import make_coco

    train_json, images = make_coco(root, "train", 4)
    val_json, _ = make_coco(root, "val", 2, seed=1)
    if edit is not None:
        coco = json.loads(train_json.read_text())
        edit(coco)
        train_json.write_text(json.dumps(coco))
    return [f"dataloader.train.dataset.json_file={train_json}",
            f"dataloader.train.dataset.image_root={images}",
            f"dataloader.test.dataset.json_file={val_json}",
            f"dataloader.test.dataset.image_root={images}"]


def det_train(root: Path, *args, edit=None) -> list[str]:
    return tool("train_det.py", "--config-file", DET_TINY, *det_data(root, edit),
                f"train.output_dir={root / 'out'}", *args)


def det_weights(path: Path, spoil: Callable[[dict], None] | None = None) -> Path:
    """The tiny detector's initial weights as a Detectron2 checkpoint; `spoil` edits them first."""
    from detectron2.config import LazyConfig, instantiate

    from mae_core.checkpoint import save_checkpoint

    model = instantiate(LazyConfig.load(str(DET_TINY)).model).state_dict()
    if spoil is not None:
        spoil(model)
    return save_checkpoint({"model": model, "iteration": 3}, path)


def finite_checkpoints(out: Path) -> list[str]:
    """Asserts that every checkpoint in `out` is finite and that last_checkpoint names one."""
    import torch

    from mae_core.checkpoint import non_finite_tensors

    names = sorted(p.name for p in out.glob("*.pth"))
    for name in names:
        bad = non_finite_tensors(torch.load(out / name, weights_only=True))
        assert not bad, f"{name} holds non-finite tensors {bad[:5]}"
    if (out / "last_checkpoint").exists():
        assert (out / "last_checkpoint").read_text().strip() in names
    return names


@bad_input("det_lr_diverges")
def _(tmp_path):
    """optimizer.lr=1e6: stops at the first non-finite gradient norm or loss, naming the iteration
    as metrics.json numbers it (one past the last finite loss there); every checkpoint left is
    finite (one per iteration was asked), last_checkpoint names one; no AP is printed."""
    out = tmp_path / "out"

    def check():
        import re

        stated = re.findall(r"training stopped at iteration (\d+)", (out / "log.txt").read_text())
        lines = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
        finite = [line["iteration"] for line in lines if "total_loss" in line]
        assert stated and int(stated[-1]) == (finite[-1] + 1 if finite else 0), (stated, finite)
        finite_checkpoints(out)
        assert not list(out.glob("eval_results*.json"))

    return Case(det_train(tmp_path, "optimizer.lr=1e6", "train.max_iter=30", "train.log_period=1",
                          "train.checkpointer.period=1", "train.eval_period=30"),
                names=["training stopped at iteration"], absent=["copypaste:"], check=check)


@bad_input("det_override_typo")
def _(tmp_path):
    """train.max_itr=5: refused, naming the key and the existing one it resembles."""
    return Case(det_train(tmp_path, "train.max_itr=5"),
                names=["train.max_itr", "train.max_iter", "+train.max_itr"])


@bad_input("det_resume_after_overrides")
def _(tmp_path):
    """`--resume` after the overrides is an option, not an override (no Hydra lexer error); with
    no checkpoint yet it starts at iteration 0."""
    return Case(det_train(tmp_path, "train.max_iter=1", "train.eval_period=0", "--resume"), exit_code=0,
                names=["Starting training from iteration 0"])


@bad_input("det_empty_segmentation")
def _(tmp_path):
    """An annotation with `segmentation: []` is refused before training, naming it and its image."""

    def spoil(coco):
        coco["annotations"][2]["segmentation"] = []

    return Case(det_train(tmp_path, "train.max_iter=1", edit=spoil),
                names=["annotation id 3", "train_00", "segmentation []"])


@bad_input("det_eval_truncated_checkpoint")
def _(tmp_path):
    """--eval-only on a truncated checkpoint names the file."""
    ckpt = tmp_path / "cut.pth"
    ckpt.write_bytes(det_weights(tmp_path / "whole.pth").read_bytes()[:5000])
    return Case(det_train(tmp_path, "--eval-only", f"train.init_checkpoint={ckpt}"),
                names=[f"{ckpt} is not a readable torch checkpoint"], absent=["copypaste:"])


@bad_input("det_eval_other_architecture")
def _(tmp_path):
    """--eval-only on a checkpoint that does not hold the config's model: refused naming the file
    and keys (Detectron2 only logs them and would evaluate random heads)."""
    def drop_heads(sd):
        for key in [k for k in sd if k.startswith("roi_heads")]:
            del sd[key]

    ckpt = det_weights(tmp_path / "other.pth", drop_heads)
    return Case(det_train(tmp_path, "--eval-only", f"train.init_checkpoint={ckpt}"),
                names=[f"{ckpt} does not hold the whole model", "roi_heads."], absent=["copypaste:"])


@bad_input("det_eval_non_finite_weights")
def _(tmp_path):
    """--eval-only on weights holding a NaN: no AP, the file is named."""
    key = "backbone.net.blocks.0.mlp.fc1.weight"
    ckpt = det_weights(tmp_path / "nan.pth", lambda sd: sd[key].fill_(float("nan")))
    return Case(det_train(tmp_path, "--eval-only", f"train.init_checkpoint={ckpt}"),
                names=[f"not evaluating {ckpt}", key], absent=["copypaste:"])


@bad_input("det_mae_checkpoint_other_architecture")
def _(tmp_path):
    """train.mae_checkpoint of a wider ViT: refused naming the encoder keys that did not load."""
    from mae_core.checkpoint import save_checkpoint
    from mae_core.mae import create_mae

    mae = create_mae("vit_base_patch16", embed_dim=64, depth=4, num_heads=2, decoder_embed_dim=32,
                     decoder_depth=1, decoder_num_heads=2)
    ckpt = save_checkpoint({"model": mae.state_dict()}, tmp_path / "mae64.pth")
    return Case(det_train(tmp_path, f"train.mae_checkpoint={ckpt}", "train.max_iter=1"),
                names=[str(ckpt), "does not fit the model completely", "blocks.0.attn.qkv.weight",
                       "train.allow_partial_load=True"])


@bad_input("det_catalogue_checkpoint_other_architecture")
def _(tmp_path):
    """A catalogue `vit_mae` backbone given a checkpoint of another width: refused naming the keys."""
    from mae_core.checkpoint import save_checkpoint
    from mae_core.mae import create_mae

    mae = create_mae("vit_toy_patch4", embed_dim=48, depth=4, num_heads=3, decoder_embed_dim=32,
                     decoder_depth=1, decoder_num_heads=2)
    ckpt = save_checkpoint({"model": mae.state_dict()}, tmp_path / "mae48.pth")
    demo = REPO / "configs" / "detection" / "demo_mask_rcnn_vit_toy.py"
    return Case(tool("train_det.py", "--config-file", demo, *det_data(tmp_path),
                     "model.backbone.name=vit_mae", f"model.backbone.checkpoint={ckpt}",
                     f"train.output_dir={tmp_path / 'out'}", "train.max_iter=1"),
                names=[str(ckpt), "does not fit the model completely", "blocks.0.attn.qkv.weight"])


@bad_input("det_infer_unreadable_image")
def _(tmp_path):
    """infer_det on a folder holding a corrupt image: names it, draws the others, exits 1 listing it."""
    from helpers_coco import make_coco

    val_json, images = make_coco(tmp_path, "val", 2)
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    weights = det_weights(tmp_path / "w.pth")
    out = tmp_path / "overlays"

    def check():
        assert sorted(p.name for p in out.iterdir()) == ["val_000.png", "val_001.png"]

    return Case(tool("infer_det.py", "--config-file", DET_TINY, "--weights", weights, "--input", images,
                     "--output", out, f"dataloader.test.dataset.json_file={val_json}"),
                exit_code=1, check=check,
                names=[f"{images / 'broken.png'}: cannot read this image", "1 unreadable image(s) skipped"])


@bad_input("det_infer_truncated_checkpoint")
def _(tmp_path):
    """infer_det on a truncated checkpoint names the file."""
    from helpers_coco import make_coco

    val_json, images = make_coco(tmp_path, "val", 1)
    ckpt = tmp_path / "cut.pth"
    ckpt.write_bytes(det_weights(tmp_path / "whole.pth").read_bytes()[:5000])
    return Case(tool("infer_det.py", "--config-file", DET_TINY, "--weights", ckpt, "--input", images,
                     "--output", tmp_path / "o", f"dataloader.test.dataset.json_file={val_json}"),
                names=[f"{ckpt} is not a readable torch checkpoint"])


# ---------------------------------------------------------------- rows: segmentation

SEG_TINY = REPO / "configs" / "segmentation" / "upernet_vit_tiny_cpu.py"


def seg_data_options(root: Path, iters: int, *extra: str) -> list[str]:
    """--cfg-options pointing the tiny config at `root` for `iters` iterations, then `extra`."""
    loaders = ("train_dataloader", "val_dataloader", "test_dataloader")
    return ["--cfg-options", *(f"{loader}.dataset.data_root={root}" for loader in loaders),
            f"train_cfg.max_iters={iters}", *extra]


@bad_input("seg_lr_diverges")
def _(tmp_path):
    """lr=1e6: the run stops at the first non-finite loss (or at the checkpoint of a non-finite
    model), naming the iteration; every checkpoint left is finite, last_checkpoint names the last
    one, which is the iteration before the named one; no metric from the named step on."""
    import json

    from helpers_seg import make_shapes_dataset

    data, work = make_shapes_dataset(tmp_path / "data"), tmp_path / "work"
    options = seg_data_options(data, 8, "train_cfg.val_interval=1", "default_hooks.checkpoint.interval=1",
                               "default_hooks.logger.interval=1", "optim_wrapper.optimizer.lr=1e6")

    def check():
        import torch

        import segmentation  # noqa: F401  (mmengine's checkpoint types become safe to load)

        [log] = work.glob("*/*.log")
        step = _named_iteration(log)
        saved = sorted(int(p.stem.split("_")[1]) for p in work.glob("iter_*.pth"))
        assert saved == list(range(1, step)), (step, saved)
        last = work / "last_checkpoint"
        if step > 1:
            assert last.read_text().strip() == str(work / f"iter_{step - 1}.pth")
        else:
            assert not last.exists()
        for path in work.glob("iter_*.pth"):
            ckpt = torch.load(path, weights_only=True)
            assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values()), path
        assert not list(work.glob(".*.tmp"))
        [scalars] = work.glob("*/vis_data/scalars.json")
        validated = [r["step"] for r in map(json.loads, scalars.read_text().splitlines()) if "mIoU" in r]
        assert all(s < step for s in validated), (step, validated)  # no metric from the named step on

    return Case(tool("train_seg.py", SEG_TINY, "--work-dir", work, *options), ["non-finite", "iteration"],
                absent=["Traceback"], check=check)


def _named_iteration(log: Path) -> int:
    """The iteration the non-finite guard's message in mmengine's log file names."""
    import re

    pattern = r"non-finite value at training iteration (\d+)|checkpoint of iteration (\d+)"
    found = re.search(pattern, log.read_text())
    assert found, f"{log} does not name the iteration"
    return int(found[1] or found[2])


@bad_input("seg_pretrained_of_another_architecture")
def _(tmp_path):
    """model.pretrained= an MAE of another size (192 wide, not 96): nothing would fit; refused
    naming the file and the keys, with the opt-in (model.backbone.allow_partial_load) named."""
    from helpers_seg import make_shapes_dataset

    from mae_core.checkpoint import save_checkpoint
    from mae_core.mae import create_mae

    data = make_shapes_dataset(tmp_path / "data", n_train=1, n_val=1)
    path = save_checkpoint({"model": create_mae("vit_mini_patch4").state_dict()}, tmp_path / "mini.pth")
    return Case(tool("train_seg.py", SEG_TINY, "--work-dir", tmp_path / "work",
                     *seg_data_options(data, 1, f"model.pretrained={path}")),
                [str(path), "blocks.0.attn.qkv.weight", "allow_partial_load"], absent=["Traceback"])


@bad_input("seg_override_of_a_missing_key")
def _(tmp_path):
    """A typo in --cfg-options: refused naming it and the closest existing key."""
    return Case(tool("train_seg.py", SEG_TINY, "--work-dir", tmp_path / "work",
                     "--cfg-options", "optim_wrapper.optimizer.lrr=1e-4"),
                ["optim_wrapper.optimizer.lrr", "closest existing keys: optim_wrapper.optimizer.lr",
                 "+optim_wrapper.optimizer.lrr="], absent=["Traceback"])


@bad_input("seg_override_of_a_file_variable")
def _(tmp_path):
    """max_iters is a variable of the config file, read only while it is parsed: overriding it
    would run all 60 iterations anyway. Refused naming the keys that hold its value."""
    return Case(tool("test_seg.py", SEG_TINY, tmp_path / "none.pth", "--cfg-options", "max_iters=3"),
                ["max_iters", "train_cfg.max_iters", "param_scheduler.1.end"], absent=["Traceback"])


@bad_input("seg_test_truncated_checkpoint")
def _(tmp_path):
    """test_seg.py on a truncated checkpoint: an error naming the file, no traceback, no metric."""
    import torch
    from helpers_seg import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", n_train=1, n_val=1)
    path = tmp_path / "iter_4.pth"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:500])
    work = tmp_path / "work"
    return Case(tool("test_seg.py", SEG_TINY, path, "--work-dir", work, *seg_data_options(data, 1)),
                [str(path), "not a readable torch checkpoint"], absent=["Traceback", '"metrics"'])


@bad_input("seg_test_non_finite_checkpoint")
def _(tmp_path):
    """test_seg.py on a checkpoint holding NaN weights: no metric, the tensor named."""
    import torch
    from helpers_seg import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", n_train=1, n_val=1)
    path = tmp_path / "nan.pth"
    # The tiny config's patch kernel (96 wide, patch 8); the rest stays initialised.
    key = "backbone.patch_embed.proj.weight"
    torch.save({"state_dict": {key: torch.full((96, 3, 8, 8), torch.nan)}}, path)
    work = tmp_path / "work"
    return Case(tool("test_seg.py", SEG_TINY, path, "--work-dir", work, *seg_data_options(data, 1)),
                ["non-finite", key, str(path)], absent=["Traceback", '"metrics"'])


# ---------------------------------------------------------------- rows: reports


@bad_input("compare_seg_log_with_its_per_class_table_cut_short")
def _(tmp_path):
    """A segmentation run killed while MMSegmentation logged its per-class IoU table (IoUMetric's
    own output, cut): compare.py stops naming the log, no report."""
    import numpy as np
    import torch
    from mmengine.logging import MMLogger
    from mmengine.structures import PixelData
    from mmseg.evaluation import IoUMetric
    from mmseg.structures import SegDataSample

    run = tmp_path / "seg/20260101_000000"
    (run / "vis_data").mkdir(parents=True)
    log = run / "20260101_000000.log"
    MMLogger.get_instance("cut_table", log_file=str(log))
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": ["background", "item"]}
    label = PixelData(data=torch.from_numpy(np.eye(4, dtype=np.int64))[None])
    metric.process({}, [SegDataSample(pred_sem_seg=label, gt_sem_seg=label).to_dict()])
    miou = float(metric.compute_metrics(metric.results)["mIoU"])
    (run / "vis_data/scalars.json").write_text(json.dumps({"mIoU": miou, "step": 4}) + "\n")
    log.write_text("\n".join(log.read_text().splitlines()[:-2]) + "\n")  # the last row and border lost
    record = {"task": "seg", "backbone": "vit_random", "img_size": 64}
    (tmp_path / "seg/run.json").write_text(json.dumps(record))
    out = tmp_path / "report"

    def check():
        assert not (out / "report.md").exists()

    return Case(tool("compare.py", "--runs", tmp_path / "seg", "--out", out), [str(log), "per class results"],
                exit_code=1, absent=["Traceback"], check=check)


# ---------------------------------------------------------------- rows: images and data


def grey_folder(folder: Path, count: int, special: tuple[str, object] | None = None) -> Path:
    """`count` 28x28 grey PNGs; `special` = (file name, PIL image) replaces the first one."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count - (special is not None)):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").save(folder / f"img{i}.png")
    if special is not None:
        special[1].save(folder / special[0])
    return folder


def image_folder_pretrain(tmp_path: Path, folder: Path) -> list[str]:
    return pretrain_cmd(tmp_path / "run", "data.dataset=image_folder", f"data.root={folder}")


@bad_input("pretrain_image_of_32_bit_floats_is_refused_by_name")
def _(tmp_path):
    import numpy as np
    from PIL import Image

    depth = Image.fromarray(np.linspace(0, 40, 28 * 28, dtype=np.float32).reshape(28, 28), "F")
    folder = grey_folder(tmp_path / "images", 8, ("depth.tif", depth))
    return Case(image_folder_pretrain(tmp_path, folder), exit_code=1,
                names=[str(folder / "depth.tif"), "mode 'F' (32-bit float grey) has no standard scale"])


@bad_input("pretrain_images_with_alpha_say_once_that_it_is_dropped")
def _(tmp_path):
    import numpy as np
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        pixels = rng.integers(0, 256, (28, 28, 4), dtype=np.uint8)
        Image.fromarray(pixels, "RGBA").save(folder / f"img{i}.png")
    return Case(image_folder_pretrain(tmp_path, folder), exit_code=0,
                names=["alpha channel dropped (first such file:", "mode 'RGBA'"])


# ---------------------------------------------------------------- the test


@pytest.mark.slow
@pytest.mark.parametrize("row", sorted(ROWS))
def test_bad_input_stops_loudly_naming_the_fault(row, tmp_path):
    case = ROWS[row](tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(case.cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=case.timeout)
    output = proc.stdout + proc.stderr
    if case.exit_code is None:
        assert proc.returncode != 0, f"{row}: exit 0 on bad input\n{output[-3000:]}"
    else:
        assert proc.returncode == case.exit_code, f"{row}: exit {proc.returncode}\n{output[-3000:]}"
    for name in case.names:
        assert name in output, f"{row}: output does not name {name!r}\n{output[-3000:]}"
    for text in case.absent:
        assert text not in output, f"{row}: output contains {text!r}\n{output[-3000:]}"
    if case.check is not None:
        case.check()
