"""What the toolkit does with bad input: one row per case, each running a real tool (or library
entry point) on a deliberately bad input and asserting that it stops with a non-zero exit and a
message naming what is at fault (the file, key, step or value). README, "On bad input", states
the promise these rows check.

A row is a function `(tmp_path) -> Case`, registered with `@bad_input`; it builds the bad input in
`tmp_path` and says which command to run and what the output must name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import helpers_tools
import pytest
from helpers_tools import tool

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
    cleanup: Callable[[], None] | None = None  # runs whatever happens (e.g. unmounts a small disk)
    during: Callable[[subprocess.Popen], None] | None = None  # acts on the running tool (e.g. signals it)
    env: dict[str, str] = field(default_factory=dict)  # added to the tool's environment


ROWS: dict[str, Callable[[Path], Case]] = {}


def bad_input(name: str):
    def register(fn: Callable[[Path], Case]):
        assert name not in ROWS, f"duplicate bad-input row {name}"
        ROWS[name] = fn
        return fn

    return register


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
    proc = helpers_tools.run(cmd, REPO, helpers_tools.base_env())
    assert proc.returncode == 0, f"setup {cmd} failed:\n{proc.stdout[-3000:]}"


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
                names=[f"{out} holds another run (checkpoint-0004.pth)", USED_FOLDER_WAY_ON])


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


@bad_input("pretrain_resume_from_non_finite_weights_refused_at_load")
def _(tmp_path):
    """Pretraining's only start from saved weights is --resume: a last.pth whose weights hold a NaN
    (written by hand: the run itself never saves one) is refused before any step, naming the tensor."""
    import torch

    out = tmp_path / "run"
    run_setup(pretrain_cmd(out))
    state = torch.load(out / "last.pth", weights_only=True)
    state["model"]["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    torch.save(state, out / "last.pth")

    def check():
        assert [r["iteration"] for r in log_records(out)] == [1, 1]  # the first run's lines only

    return Case(pretrain_cmd(out, "--resume", "epochs=2"), exit_code=1, check=check,
                names=[f"{out / 'last.pth'} cannot be resumed from", "model.blocks.0.attn.qkv.weight"])


# ---------------------------------------------------------------- rows: one run per output folder


def held_by(cmd: list[str], folder: Path) -> subprocess.Popen:
    """Starts `cmd`, a run into `folder`, in the background and pauses it (SIGSTOP) as soon as it
    holds the folder's claim: a second run started now meets a run in progress, whatever the
    timing. `resume_held` lets it go on and waits for its end."""
    import signal
    import time

    log = open(folder.parent / f"{folder.name}.first.log", "w")  # noqa: SIM115 (closed by the process's end)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads((folder / "run.lock").read_text()).get("pid") == proc.pid:
                proc.send_signal(signal.SIGSTOP)
                return proc
        except (OSError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"{cmd} never claimed {folder}: {log.name}")


def resume_held(proc: subprocess.Popen, folder: Path) -> None:
    import signal

    proc.send_signal(signal.SIGCONT)
    assert proc.wait(timeout=600) == 0, (folder.parent / f"{folder.name}.first.log").read_text()[-3000:]
    assert not (folder / "run.lock").exists()  # released at the end


def claim_refusal(folder: Path, proc: subprocess.Popen) -> list[str]:
    """What a refusal by a held folder names: the folder, the holder, how to go on."""
    return [f"{folder} is claimed by another run (process {proc.pid} on host", "--resume", "--overwrite",
            "choose another output folder"]


def dead_claim(folder: Path) -> int:
    """A claim of this host left by a process that has ended (a killed run); returns its pid."""
    import socket

    gone = subprocess.Popen(["true"])
    gone.wait()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "run.lock").write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(),
                                                 "started": "earlier", "command": "a killed run"}))
    return gone.pid


# The same words on all three paths.
USED_FOLDER_WAY_ON = ("pass --resume to continue it, --overwrite to replace it, or choose another "
                      "output folder")


def files_of(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder` with its content hash and modification time."""
    import hashlib

    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def unchanged(folder: Path) -> Callable[[], None]:
    """A check that `folder` ends as it is now: the same files, contents and times."""
    before = files_of(folder)
    return lambda: _assert_same(before, files_of(folder))


def _assert_same(before: dict, after: dict) -> None:
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after)
                             if before.get(k) != after.get(k)}


@bad_input("pretrain_two_runs_into_one_folder_one_refused_the_others_log_its_own")
def _(tmp_path):
    out = tmp_path / "run"
    first = held_by(pretrain_cmd(out, "epochs=2"), out)

    def check():
        resume_held(first, out)
        assert [r["iteration"] for r in log_records(out)] == [1, 1, 2, 2]  # each step and epoch once
        saved = [p.name for p in assert_checkpoints_finite(out)]
        assert saved == ["checkpoint-0001.pth", "checkpoint-0002.pth", "last.pth"]

    return Case(pretrain_cmd(out, "epochs=2"), exit_code=1, check=check, names=claim_refusal(out, first))


@bad_input("pretrain_ddp_into_a_used_folder_every_process_refused")
def _(tmp_path):
    """Two processes: the main one claims and checks the folder, the other learns the refusal from
    it and stops too (instead of waiting for the first step's collective)."""
    from helpers_pretrain import require_fashion_mnist

    require_fashion_mnist()
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pth").write_bytes(b"another run")
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tools/pretrain.py"), "--config", TOY_CONFIG, f"output_dir={out}", *TOY_PRETRAIN,
           "batch_size=4"]
    return Case(cmd, check=unchanged(out), timeout=300,
                names=[f"{out} holds another run (last.pth)", USED_FOLDER_WAY_ON])


@bad_input("pretrain_claim_of_a_dead_process_refused_without_resume")
def _(tmp_path):
    out = tmp_path / "run"
    pid = dead_claim(out)
    return Case(pretrain_cmd(out), exit_code=1, check=unchanged(out),  # the claim stays, nothing written
                names=[f"{out} holds the claim of a run that is no longer running (process {pid} on host",
                       "Pass --resume to take it over"])


@bad_input("pretrain_claim_of_a_dead_process_taken_over_with_resume")
def _(tmp_path):
    out = tmp_path / "run"
    pid = dead_claim(out)

    def check():
        assert not (out / "run.lock").exists()
        assert [p.name for p in assert_checkpoints_finite(out)] == ["checkpoint-0001.pth", "last.pth"]

    return Case(pretrain_cmd(out, "--resume"), exit_code=0, check=check,
                names=["taking over the claim of a run that is no longer running", f"process {pid} on host"])


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


def det_data(root: Path, edit: Callable[[dict], None] | None = None,
             edit_val: Callable[[dict], None] | None = None) -> list[str]:
    """Overrides pointing the tiny detection config at a generated COCO set in `root` (4 training,
    2 validation images); `edit` and `edit_val` may spoil the training and validation jsons first."""
    from helpers_coco import make_coco

    train_json, images = make_coco(root, "train", 4)
    val_json, _ = make_coco(root, "val", 2, seed=1)
    for json_file, change in ((train_json, edit), (val_json, edit_val)):
        if change is not None:
            coco = json.loads(json_file.read_text())
            change(coco)
            json_file.write_text(json.dumps(coco))
    return [f"dataloader.train.dataset.json_file={train_json}",
            f"dataloader.train.dataset.image_root={images}",
            f"dataloader.test.dataset.json_file={val_json}",
            f"dataloader.test.dataset.image_root={images}"]


def det_train(root: Path, *args, edit=None, edit_val=None) -> list[str]:
    return tool("train_det.py", "--config-file", DET_TINY, *det_data(root, edit, edit_val),
                f"train.output_dir={root / 'out'}", *args)


def det_weights(path: Path, spoil: Callable[[dict], None] | None = None, *overrides: str) -> Path:
    """The tiny detector's initial weights (config `overrides` applied) as a Detectron2 checkpoint;
    `spoil` edits them first."""
    from detectron2.config import LazyConfig, instantiate

    from mae_core.checkpoint import save_checkpoint

    cfg = LazyConfig.apply_overrides(LazyConfig.load(str(DET_TINY)), list(overrides))
    model = instantiate(cfg.model).state_dict()
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


def det_run(root: Path) -> tuple[list[str], Path]:
    """A whole tiny detection run (two iterations, evaluated at the end) and its output folder."""
    return det_train(root, "train.max_iter=2", "train.eval_period=2", "train.log_period=1"), root / "out"


@bad_input("det_two_runs_into_one_folder_one_refused_the_others_metrics_its_own")
def _(tmp_path):
    cmd, out = det_run(tmp_path)
    first = held_by(cmd, out)

    def check():
        resume_held(first, out)
        iterations = [r["iteration"] for r in map(json.loads, (out / "metrics.json").read_text().splitlines())
                      if "total_loss" in r]
        assert iterations == [0, 1], iterations  # each logged once, by one run
        assert len(list(out.glob("events.out.tfevents.*"))) == 1

    return Case(cmd, exit_code=1, check=check, names=claim_refusal(out, first))


@bad_input("det_second_run_into_a_used_folder_refused_its_files_unchanged")
def _(tmp_path):
    cmd, out = det_run(tmp_path)
    run_setup(cmd)
    return Case(cmd, exit_code=1, check=unchanged(out),
                names=[f"{out} holds another run (eval_results.json", "model_final.pth", USED_FOLDER_WAY_ON,
                       "choose another output folder (train.output_dir=DIR)"])


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


@bad_input("det_override_typo_under_two_processes")
def _(tmp_path):
    """The same typo under --num-gpus 2 (two gloo processes): each spawned worker ends with the
    tool's one-line message, the launcher with one more naming the worker; no traceback."""
    return Case(det_train(tmp_path, "--num-gpus", "2", "train.max_itr=5"), exit_code=1,
                names=["train_det.py: error: ", "train.max_itr", "train.max_iter",
                       "terminated with exit code 1"],
                absent=["Traceback", "ProcessExitedException"])


@bad_input("det_config_file_missing")
def _(tmp_path):
    """A config path with a typo: one line naming it (it was a traceback from deep in iopath)."""
    missing = tmp_path / "mask_rcnn_vit_bsae.py"
    return Case(tool("train_det.py", "--config-file", missing), exit_code=1, absent=["Traceback"],
                names=[f"train_det.py: error: --config-file: config file {missing} does not exist"])


@bad_input("seg_config_file_missing")
def _(tmp_path):
    """The same for segmentation's training (a traceback from mmengine before)."""
    missing = tmp_path / "upernet_vit_bsae.py"
    return Case(tool("train_seg.py", missing), exit_code=1, absent=["Traceback"],
                names=[f"train_seg.py: error: config file {missing} does not exist"])


@bad_input("seg_test_config_file_missing")
def _(tmp_path):
    """And for segmentation's testing."""
    missing = tmp_path / "upernet_vit_bsae.py"
    return Case(tool("test_seg.py", missing, tmp_path / "iter_1.pth"), exit_code=1, absent=["Traceback"],
                names=[f"test_seg.py: error: config file {missing} does not exist"])


@bad_input("det_resume_after_overrides")
def _(tmp_path):
    """`--resume` after the overrides is an option, not an override (no Hydra lexer error); with
    no checkpoint yet it starts at iteration 0."""
    return Case(det_train(tmp_path, "train.max_iter=1", "train.eval_period=0", "--resume"), exit_code=0,
                names=["Starting training from iteration 0"])


@bad_input("det_label_fraction_out_of_range")
def _(tmp_path):
    """dataloader.train.dataset.label_fraction=1.5: refused before training, naming the key and the range."""
    return Case(det_train(tmp_path, "train.max_iter=1", "dataloader.train.dataset.label_fraction=1.5"),
                names=["dataloader.train.dataset", "label_fraction=1.5", "(0, 1]"], absent=["Traceback"])


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


NAN_KEY = "backbone.net.blocks.0.mlp.fc1.weight"


def det_nan_weights(path: Path) -> Path:
    return det_weights(path, lambda sd: sd[NAN_KEY].fill_(float("nan")))


@bad_input("det_eval_non_finite_weights")
def _(tmp_path):
    """--eval-only on weights holding a NaN: refused as the file loads, naming it; no AP."""
    ckpt = det_nan_weights(tmp_path / "nan.pth")
    return Case(det_train(tmp_path, "--eval-only", f"train.init_checkpoint={ckpt}"),
                names=[f"not loading {ckpt}", NAN_KEY], absent=["copypaste:"])


@bad_input("det_init_checkpoint_non_finite_refused_before_training")
def _(tmp_path):
    """train.init_checkpoint holding a NaN: refused as it loads, before the first iteration (it used
    to train until the first save)."""
    ckpt = det_nan_weights(tmp_path / "nan.pth")

    def check():
        metrics = tmp_path / "out" / "metrics.json"  # Detectron2's writer creates it before training
        assert not metrics.exists() or not metrics.read_text().strip()
        assert not list((tmp_path / "out").glob("*.pth"))

    return Case(det_train(tmp_path, f"train.init_checkpoint={ckpt}", "train.max_iter=2"), check=check,
                names=[f"not loading {ckpt}", NAN_KEY], absent=["Starting training from iteration"])


@bad_input("det_mae_checkpoint_non_finite_refused_before_training")
def _(tmp_path):
    """train.mae_checkpoint holding an infinity (an MAE of the tiny backbone's shape): refused at load."""
    from mae_core.checkpoint import save_checkpoint
    from mae_core.mae import create_mae

    mae = create_mae("vit_base_patch16", embed_dim=96, depth=4, num_heads=3, decoder_embed_dim=32,
                     decoder_depth=1, decoder_num_heads=2)
    state = mae.state_dict()
    state["blocks.1.attn.qkv.weight"][0, 0] = float("inf")
    ckpt = save_checkpoint({"model": state}, tmp_path / "mae_inf.pth")
    return Case(det_train(tmp_path, f"train.mae_checkpoint={ckpt}", "train.max_iter=2"),
                names=[f"not loading {ckpt}", "blocks.1.attn.qkv.weight", "nothing was loaded"],
                absent=["Starting training from iteration"])


def add_triangle(coco: dict) -> None:
    """A third category, given to the first annotation."""
    coco["categories"].append({"id": 3, "name": "triangle"})
    coco["annotations"][0]["category_id"] = 3


@bad_input("det_more_categories_than_num_classes")
def _(tmp_path):
    """Three categories through the 2-class tiny config: Detectron2 would train the third as background
    and print `AP-triangle: null`; refused before training, naming both counts and the fix."""
    return Case(det_train(tmp_path, "train.max_iter=1", edit=add_triangle, edit_val=add_triangle),
                names=["model.roi_heads.num_classes is 2", str(tmp_path / "train.json"), "has 3 categories",
                       "3: triangle", "set model.roi_heads.num_classes=3"], absent=["copypaste:"])


@bad_input("det_test_categories_swap_the_training_names")
def _(tmp_path):
    """The validation json gives ids 1 and 2 each other's names: the model's class 0 would be scored
    as the other class. Refused naming the first differing class, its id and both names."""

    def swap(coco):
        coco["categories"] = [{"id": 1, "name": "disc"}, {"id": 2, "name": "square"}]

    return Case(det_train(tmp_path, "train.max_iter=1", edit_val=swap),
                names=[str(tmp_path / "val.json"), "class 0", "id 1 'square' in training",
                       "id 1 'disc' in the test set"], absent=["copypaste:"])


@bad_input("det_test_set_with_fewer_categories")
def _(tmp_path):
    """A validation json listing only 'square': Detectron2's evaluator maps by contiguous id, so a
    subset is refused, naming the category it lacks."""

    def squares_only(coco):
        coco["categories"] = coco["categories"][:1]
        coco["annotations"] = [a for a in coco["annotations"] if a["category_id"] == 1]

    return Case(det_train(tmp_path, "train.max_iter=1", edit_val=squares_only),
                names=["class 1", "id 2 'disc' in training and absent in the test set"],
                absent=["copypaste:"])


@bad_input("det_eval_checkpoint_of_another_class_count")
def _(tmp_path):
    """--eval-only on a 3-class checkpoint with the 2-category data and config: refused as it loads,
    naming both class counts."""
    ckpt = det_weights(tmp_path / "three.pth", None, "model.roi_heads.num_classes=3")
    return Case(det_train(tmp_path, "--eval-only", f"train.init_checkpoint={ckpt}"),
                names=[f"{ckpt} does not hold the whole model", "its box classifier has 3 classes",
                       "(model.roi_heads.num_classes) 2"], absent=["copypaste:"])


@bad_input("det_eval_config_class_count_other_than_the_test_set")
def _(tmp_path):
    """--eval-only with model.roi_heads.num_classes=3 on a 2-category test set: refused naming both."""
    ckpt = det_weights(tmp_path / "three.pth", None, "model.roi_heads.num_classes=3")
    return Case(det_train(tmp_path, "--eval-only", f"train.init_checkpoint={ckpt}",
                          "model.roi_heads.num_classes=3"),
                names=["model.roi_heads.num_classes is 3", f"{tmp_path / 'val.json'} has 2 categories"],
                absent=["copypaste:"])


@bad_input("det_16_bit_images_are_read_at_their_scale")
def _(tmp_path):
    """Every image a real 16-bit grey PNG: training and evaluation run, and the test mapper's tensor
    keeps the picture (Detectron2's own reader made every pixel 255): its mean is within one level
    of the 8-bit picture's."""
    from helpers_coco import to_sixteen_bit_grey

    cmd = det_train(tmp_path, "train.max_iter=1")
    means = {path.name: to_sixteen_bit_grey(path) for path in sorted((tmp_path / "images").glob("*.png"))}

    def check():
        from detectron2.config import instantiate

        from detection.data import coco_dataset
        from detection.overrides import load_lazy_config

        mapper = instantiate(load_lazy_config(str(DET_TINY), []).dataloader.test.mapper)
        records = coco_dataset(f"sixteen_{tmp_path.name}", tmp_path / "val.json", tmp_path / "images")
        for record in records:
            image = mapper(record)["image"]
            assert abs(image.mean().item() - means[Path(record["file_name"]).name]) < 1.0

    return Case(cmd, exit_code=0, check=check, names=["copypaste: Task: bbox"])


@bad_input("det_32_bit_image_is_refused_by_name")
def _(tmp_path):
    """A validation image of 32-bit floats: --eval-only stops naming the file and its mode."""
    import numpy as np
    from PIL import Image

    ckpt = det_weights(tmp_path / "w.pth")
    cmd = det_train(tmp_path, "--eval-only", f"train.init_checkpoint={ckpt}")
    depth = tmp_path / "images" / "val_001.png"
    Image.fromarray(np.linspace(0, 40, 128 * 128, dtype=np.float32).reshape(128, 128), "F").save(
        depth.with_suffix(".tif"))
    depth.with_suffix(".tif").rename(depth)  # a TIFF under the json's name: PIL reads by content
    return Case(cmd, names=[str(depth), "mode 'F' (32-bit float grey) has no standard scale"],
                absent=["copypaste:"])


@bad_input("det_infer_class_count_other_than_the_test_set")
def _(tmp_path):
    """infer_det with model.roi_heads.num_classes=3 and a 2-category test json: refused naming both."""
    from helpers_coco import make_coco

    val_json, images = make_coco(tmp_path, "val", 1)
    weights = det_weights(tmp_path / "three.pth", None, "model.roi_heads.num_classes=3")
    return Case(tool("infer_det.py", "--config-file", DET_TINY, "--weights", weights, "--input", images,
                     "--output-dir", tmp_path / "o", f"dataloader.test.dataset.json_file={val_json}",
                     "model.roi_heads.num_classes=3"),
                names=["model.roi_heads.num_classes is 3", f"test set {val_json} has 2 categories"],
                check=lambda: _assert_nothing_written(tmp_path / "o"))


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
                     "model.roi_heads.num_classes=2",
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
                     "--output-dir", out, f"dataloader.test.dataset.json_file={val_json}"),
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
                     "--output-dir", tmp_path / "o", f"dataloader.test.dataset.json_file={val_json}"),
                names=[f"{ckpt} is not a readable torch checkpoint"])


# ---------------------------------------------------------------- rows: segmentation

SEG_TINY = REPO / "configs" / "segmentation" / "upernet_vit_tiny_cpu.py"


def seg_data_options(root: Path, iters: int, *extra: str) -> list[str]:
    """--cfg-options pointing the tiny config at `root` for `iters` iterations, then `extra`."""
    loaders = ("train_dataloader", "val_dataloader", "test_dataloader")
    return ["--cfg-options", *(f"{loader}.dataset.data_root={root}" for loader in loaders),
            f"train_cfg.max_iters={iters}", *extra]


def seg_run(root: Path) -> tuple[list[str], Path]:
    """A whole tiny segmentation run (two iterations, validated and saved at the end) and its work dir."""
    from helpers_seg import make_shapes_dataset

    data, work = make_shapes_dataset(root / "data"), root / "work"
    options = seg_data_options(data, 2, "train_cfg.val_interval=2", "default_hooks.checkpoint.interval=2",
                               "default_hooks.logger.interval=1")
    return tool("train_seg.py", SEG_TINY, "--work-dir", work, *options), work


@bad_input("seg_two_runs_into_one_work_dir_one_refused_the_others_logs_its_own")
def _(tmp_path):
    cmd, work = seg_run(tmp_path)
    first = held_by(cmd, work)

    def check():
        resume_held(first, work)
        [scalars] = work.glob("*/vis_data/scalars.json")  # one run's logs: one timestamp folder
        steps = [r["step"] for r in map(json.loads, scalars.read_text().splitlines()) if "loss" in r]
        assert steps == [1, 2], steps
        assert len(list(work.glob("*/vis_data/events.out.tfevents.*"))) == 1

    return Case(cmd, exit_code=1, check=check, names=claim_refusal(work, first))


@bad_input("seg_second_run_into_a_used_work_dir_refused_its_files_unchanged")
def _(tmp_path):
    cmd, work = seg_run(tmp_path)
    run_setup(cmd)
    return Case(cmd, exit_code=1, check=unchanged(work),
                names=[f"{work} holds another run (", "iter_2.pth", USED_FOLDER_WAY_ON,
                       "choose another output folder (--work-dir)"])


@bad_input("seg_overwrite_replaces_the_previous_run_leaving_one_runs_logs")
def _(tmp_path):
    cmd, work = seg_run(tmp_path)
    run_setup(cmd)
    [old] = work.glob("*/vis_data")

    def check():
        [new] = work.glob("*/vis_data")
        assert new != old and (work / "iter_2.pth").is_file() and (work / "run.json").is_file()

    return Case([*cmd, "--overwrite"], exit_code=0, check=check,
                names=["--overwrite: deleted the previous run's", "iter_2.pth"])


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


@bad_input("seg_label_count_above_the_images")
def _(tmp_path):
    """train_dataloader.dataset.label_count=50 of 4 training images: refused, naming the folder and
    the count."""
    from helpers_seg import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data")
    return Case(tool("train_seg.py", SEG_TINY, "--work-dir", tmp_path / "work",
                     *seg_data_options(data, 1, "train_dataloader.dataset.label_count=50")),
                names=["images/training", "label_count=50", "4 training images"], absent=["Traceback"])


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


def seg_train(tmp_path: Path, data: Path, *extra: str) -> list[str]:
    return tool("train_seg.py", SEG_TINY, "--work-dir", tmp_path / "work", *seg_data_options(data, 1, *extra))


def assert_no_seg_checkpoint(work: Path) -> None:
    assert not list(work.glob("iter_*.pth")) and not (work / "last_checkpoint").exists()


@bad_input("seg_batch_of_one_names_the_cause_and_the_fix")
def _(tmp_path):
    """train_dataloader.batch_size=1: UperNet's pool-scale-1 BatchNorm cannot train on one value per
    channel. Refused before training, naming the cause and the two fixes (PyTorch's own message
    named neither)."""
    from helpers_seg import make_shapes_dataset

    from segmentation.train import ONE_IMAGE_NORM

    data = make_shapes_dataset(tmp_path / "data", n_train=2, n_val=1)
    return Case(seg_train(tmp_path, data, "train_dataloader.batch_size=1"),
                ["train_dataloader.batch_size=1 on 1 device(s)", "pool_scales (1, 2) includes 1",
                 "Expected more than 1 value per channel when training", "train_dataloader.batch_size=2",
                 ONE_IMAGE_NORM], exit_code=1, absent=["Traceback"],
                check=lambda: assert_no_seg_checkpoint(tmp_path / "work"))


@bad_input("seg_batch_of_one_trains_with_the_suggested_norm")
def _(tmp_path):
    """The fix the refusal above suggests (GroupNorm in the decode head) trains at one image per device."""
    from helpers_seg import make_shapes_dataset

    from segmentation.train import ONE_IMAGE_NORM

    data = make_shapes_dataset(tmp_path / "data", n_train=2, n_val=1)

    def check():
        assert (tmp_path / "work" / "iter_1.pth").is_file()

    return Case(seg_train(tmp_path, data, "train_dataloader.batch_size=1", *ONE_IMAGE_NORM.split()), ["mIoU"],
                exit_code=0, check=check)


def seg_nan_mae(path: Path) -> Path:
    """A toy MAE (the tiny config's backbone width) whose first qkv weight holds a NaN."""
    from mae_core.checkpoint import save_checkpoint
    from mae_core.mae import create_mae

    state = create_mae("vit_toy_patch4").state_dict()
    state["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    return save_checkpoint({"model": state}, path)


@bad_input("seg_pretrained_non_finite_refused_at_load")
def _(tmp_path):
    """model.pretrained holding a NaN: refused as it loads, naming the file and tensor, no iteration run."""
    from helpers_seg import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", n_train=1, n_val=1)
    ckpt = seg_nan_mae(tmp_path / "nan.pth")
    return Case(seg_train(tmp_path, data, f"model.pretrained={ckpt}"),
                [f"not loading {ckpt}", "blocks.0.attn.qkv.weight", "nothing was loaded"], exit_code=1,
                absent=["Traceback", "Iter(train)"],
                check=lambda: assert_no_seg_checkpoint(tmp_path / "work"))


@bad_input("seg_load_from_non_finite_refused_at_load")
def _(tmp_path):
    """load_from= a segmentor checkpoint holding an infinity: refused as mmengine loads it, naming it."""
    import torch
    from helpers_seg import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", n_train=1, n_val=1)
    path = tmp_path / "inf.pth"
    key = "backbone.patch_embed.proj.weight"
    torch.save({"state_dict": {key: torch.full((96, 3, 8, 8), torch.inf)}}, path)
    return Case(seg_train(tmp_path, data, f"load_from={path}"), [f"not loading {path}", f"state_dict.{key}"],
                exit_code=1, absent=["Traceback", "Iter(train)"],
                check=lambda: assert_no_seg_checkpoint(tmp_path / "work"))


@bad_input("seg_32_bit_image_is_refused_by_name")
def _(tmp_path):
    """Training images of 32-bit floats (OpenCV cannot decode them; mmcv then failed without naming
    the file): refused naming the file and mode, as pretraining and detection refuse them."""
    import numpy as np
    from helpers_seg import make_shapes_dataset
    from PIL import Image

    data = make_shapes_dataset(tmp_path / "data", n_train=2, n_val=1)
    folder = data / "images" / "training"
    for jpg in folder.glob("*.jpg"):
        depth = Image.fromarray(np.linspace(0, 40, 64 * 64, dtype=np.float32).reshape(64, 64), "F")
        depth.save(jpg.with_suffix(".tif"))
        jpg.with_suffix(".tif").rename(jpg)  # a TIFF under the dataset's name: PIL reads by content
    return Case(seg_train(tmp_path, data), [f"cannot read image {folder}", "mode 'F' (32-bit float grey)"],
                exit_code=1, absent=["Traceback"])

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

    return Case(tool("compare.py", "--runs", tmp_path / "seg", "--output-dir", out),
                [str(log), "per class results"], exit_code=1, absent=["Traceback"], check=check)


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


# ---------------------------------------------------------------- rows: class contract, faults, preemption


@bad_input("seg_train_head_of_8_classes_on_a_3_class_dataset")
def _(tmp_path):
    """model.decode_head.num_classes=8 on the tiny 3-class set: refused before training, naming the
    key, both counts and the dataset (mmseg trained and scored it, exit 0)."""
    from helpers_seg import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", n_train=2, n_val=1)
    return Case(seg_train(tmp_path, data, "model.decode_head.num_classes=8"), exit_code=1,
                names=[f"model.decode_head.num_classes=8 but the training set (SegFolderDataset at {data}) "
                       "has 3 classes"], absent=["Traceback", "Iter(train)"],
                check=lambda: assert_no_seg_checkpoint(tmp_path / "work"))


@bad_input("seg_test_auxiliary_head_of_8_classes_on_a_3_class_test_set")
def _(tmp_path):
    from helpers_seg import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", n_train=1, n_val=1)
    return Case(tool("test_seg.py", SEG_TINY, tmp_path / "none.pth", "--work-dir", tmp_path / "work",
                     *seg_data_options(data, 1, "model.auxiliary_head.num_classes=8")), exit_code=1,
                names=["model.auxiliary_head.num_classes=8 but the test set (SegFolderDataset at "
                       f"{data}) has 3 classes"], absent=["Traceback", '"metrics"'])


def seg_checkpoint_of_8_classes(path: Path) -> Path:
    """A segmentor checkpoint whose decode head classifies 8 classes (the tiny config's 32 channels);
    mmengine loads non-strictly and would leave the 3-class model's head at initialisation."""
    import torch

    torch.save({"state_dict": {"decode_head.conv_seg.weight": torch.zeros(8, 32, 1, 1),
                               "decode_head.conv_seg.bias": torch.zeros(8)}}, path)
    return path


@bad_input("seg_test_checkpoint_of_8_classes_on_a_3_class_test_set")
def _(tmp_path):
    from helpers_seg import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", n_train=1, n_val=1)
    ckpt = seg_checkpoint_of_8_classes(tmp_path / "wide.pth")
    cmd = tool("test_seg.py", SEG_TINY, ckpt, "--work-dir", tmp_path / "work", *seg_data_options(data, 1))
    return Case(cmd, exit_code=1, absent=["Traceback", '"metrics"'],
                names=[f"{ckpt}'s decode_head has 8 classes (decode_head.conv_seg.weight [8, 32, 1, 1]) "
                       f"but the model's has 3, the classes of the test set (SegFolderDataset at {data})"])


@bad_input("seg_train_load_from_a_checkpoint_of_8_classes")
def _(tmp_path):
    from helpers_seg import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", n_train=2, n_val=1)
    ckpt = seg_checkpoint_of_8_classes(tmp_path / "wide.pth")
    return Case(seg_train(tmp_path, data, f"load_from={ckpt}"), exit_code=1,
                names=[f"{ckpt}'s decode_head has 8 classes", "the training set"],
                absent=["Traceback", "Iter(train)"],
                check=lambda: assert_no_seg_checkpoint(tmp_path / "work"))


def small_disk(folder: Path, size: int) -> Callable[[], None]:
    """A tmpfs of `size` bytes mounted at `folder`: a real full disk for a write that needs more.
    Returns the unmount. Needs root (CI runs as root); anywhere else the row fails saying so."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                           capture_output=True, text=True)
    if mount.returncode != 0 or not os.path.ismount(folder):
        pytest.fail(f"a full-disk row needs `mount -t tmpfs` (root): {mount.stderr.strip() or 'not mounted'}")

    def unmount() -> None:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)
        shutil.rmtree(folder)

    return unmount


def disk_just_too_small(first: Path, out: Path, name: str) -> Callable[[], None]:
    """Copies the run in `first` to `out` on a disk with room for about half of one more `name`:
    the next checkpoint the resumed run writes cannot fit. Returns the unmount."""
    import shutil

    used = sum(p.stat().st_size for p in first.rglob("*") if p.is_file())
    unmount = small_disk(out, used + (first / name).stat().st_size // 2 + 64 * 1024)
    shutil.copytree(first, out, dirs_exist_ok=True)
    return unmount


def assert_failed_save_left_nothing(out: Path, kept: dict[str, bytes], absent: str) -> None:
    """The failed save touched no earlier checkpoint and left no partial or temporary file."""
    for name, data in kept.items():
        assert (out / name).read_bytes() == data, f"{name} changed"
    leftovers = [p.name for p in out.rglob(".*.tmp")] + [p.name for p in out.glob(absent)]
    assert not leftovers, leftovers


@bad_input("pretrain_checkpoint_write_on_a_full_disk_names_the_disk_and_the_last_good_checkpoint")
def _(tmp_path):
    """Epoch 0 saved, then resumed on a disk too small for epoch 1's checkpoint: stopped naming the
    file, ENOSPC, the disk, and last.pth to resume from (torch.save said only 'unexpected pos')."""
    first, out = tmp_path / "first", tmp_path / "disk"
    run_setup(pretrain_cmd(first))
    unmount = disk_just_too_small(first, out, "last.pth")
    kept = {name: (out / name).read_bytes() for name in ("last.pth", "checkpoint-0001.pth")}
    return Case(pretrain_cmd(out, "--resume", "epochs=2"), exit_code=1, cleanup=unmount,
                names=[f"could not write {out / 'checkpoint-0002.pth'}: No space left on device (ENOSPC)",
                       f"on the file system mounted at {out}",
                       f"The last good checkpoint is {out / 'last.pth'}", "--resume"],
                absent=["Traceback", "unexpected pos"],
                check=lambda: assert_failed_save_left_nothing(out, kept, "checkpoint-0002.pth"))


def disk_for_one_more(folder: Path, checkpoint: Path) -> Callable[[], None]:
    """A disk at `folder` with room for one checkpoint like `checkpoint` and half another (plus
    logs): a run saving every iteration writes its first and fails on its second. Returns the unmount."""
    size = checkpoint.stat().st_size
    return small_disk(folder, size + size // 2 + 1024 * 1024)


@bad_input("det_checkpoint_write_on_a_full_disk_names_the_disk_and_the_last_good_checkpoint")
def _(tmp_path):
    """A checkpoint per iteration into a disk with room for one: the second save stops the run
    naming the file, ENOSPC, the disk and the first checkpoint; last_checkpoint still names it."""
    first, out = tmp_path / "first", tmp_path / "disk"
    every_iteration = ["train.checkpointer.period=1", "train.eval_period=100", "train.log_period=1"]
    run_setup(det_train(first, "train.max_iter=1", *every_iteration))
    unmount = disk_for_one_more(out, first / "out" / "model_final.pth")

    def check():
        assert (out / "last_checkpoint").read_text() == "model_0000000.pth"
        assert_failed_save_left_nothing(out, {}, "model_0000001.pth")

    return Case(det_train(tmp_path, "train.max_iter=3", f"train.output_dir={out}", *every_iteration),
                exit_code=1, cleanup=unmount, check=check,
                names=[f"could not write {out / 'model_0000001.pth'}: No space left on device (ENOSPC)",
                       f"on the file system mounted at {out}",
                       f"The last good checkpoint is {out / 'model_0000000.pth'}"],
                absent=["unexpected pos"])


@bad_input("seg_checkpoint_write_on_a_full_disk_names_the_disk_and_the_last_good_checkpoint")
def _(tmp_path):
    """The same for segmentation: iter_1.pth fits, iter_2.pth does not; last_checkpoint keeps
    naming iter_1.pth, the checkpoint --resume continues from."""
    from helpers_seg import make_shapes_dataset

    data = make_shapes_dataset(tmp_path / "data", n_train=2, n_val=1)
    first, work = tmp_path / "first", tmp_path / "disk"
    options = ["default_hooks.checkpoint.interval=1", "train_cfg.val_interval=100"]
    run_setup(tool("train_seg.py", SEG_TINY, "--work-dir", first, *seg_data_options(data, 1, *options)))
    unmount = disk_for_one_more(work, first / "iter_1.pth")

    def check():
        assert (work / "last_checkpoint").read_text().strip() == str(work / "iter_1.pth")
        assert_failed_save_left_nothing(work, {}, "iter_2.pth")

    return Case(tool("train_seg.py", SEG_TINY, "--work-dir", work, *seg_data_options(data, 3, *options)),
                exit_code=1, cleanup=unmount, check=check,
                names=[f"could not write {work / 'iter_2.pth'}: No space left on device (ENOSPC)",
                       f"on the file system mounted at {work}",
                       f"The last good checkpoint is {work / 'iter_1.pth'}"],
                absent=["Traceback", "unexpected pos"])


# 64 steps in one epoch, drop path on (the restored random generator matters), a line per step.
PREEMPTIBLE = ["data.limit=512", "model.drop_path_rate=0.1"]


def signal_after_steps(out: Path, steps: int, sig: int) -> Callable[[subprocess.Popen], None]:
    """Sends `sig` to the tool once log.jsonl holds `steps` lines: in mid-epoch."""
    import time

    def during(proc: subprocess.Popen) -> None:
        log = out / "log.jsonl"
        while proc.poll() is None and (not log.is_file() or len(log.read_text().splitlines()) < steps):
            time.sleep(0.02)
        proc.send_signal(sig)

    return during


def assert_checkpoint_at_the_last_logged_step(out: Path) -> dict:
    """last.pth holds the iteration the preempted run logged last, in mid-epoch (no epoch line)."""
    import torch

    state = torch.load(out / "last.pth", weights_only=True)
    records = log_records(out)
    assert all("loss" in r for r in records), "the preempted run finished an epoch"
    assert state["iteration"] == records[-1]["iteration"] == len(records), (state["iteration"], records[-1])
    assert 0 < state["epoch_progress"]["step"] == state["iteration"] < 64 and state["epoch"] == -1
    return state


@bad_input("pretrain_sigterm_mid_epoch_checkpoints_that_step_and_resumes_on_the_same_curve")
def _(tmp_path):
    """A scheduler's SIGTERM after 3 of 64 steps: the run finishes its step, writes last.pth at that
    iteration and exits 143. --resume then continues mid-epoch: its log.jsonl (per-step losses and
    the epoch's mean) equals the uninterrupted run's exactly."""
    straight, out = tmp_path / "straight", tmp_path / "run"
    run_setup(pretrain_cmd(straight, *PREEMPTIBLE))

    def check():
        assert_checkpoint_at_the_last_logged_step(out)
        run_setup(pretrain_cmd(out, *PREEMPTIBLE, "--resume"))
        assert log_records(out) == log_records(straight)

    return Case(pretrain_cmd(out, *PREEMPTIBLE), exit_code=143, absent=["Traceback"], check=check,
                during=signal_after_steps(out, 3, signal.SIGTERM),
                names=["SIGTERM received: stopped after iteration",
                       f"wrote {out / 'last.pth'} at that iteration",
                       "continue with --resume (exit status 143)"])


@bad_input("pretrain_sigusr1_mid_epoch_checkpoints_that_step")
def _(tmp_path):
    """SLURM's warning before a time limit (`--signal=USR1@...`) is a preemption notice too."""
    out = tmp_path / "run"
    return Case(pretrain_cmd(out, *PREEMPTIBLE), exit_code=143, absent=["Traceback"],
                during=signal_after_steps(out, 3, signal.SIGUSR1),
                names=["SIGUSR1 received: stopped after iteration", "(exit status 143)"],
                check=lambda: assert_checkpoint_at_the_last_logged_step(out))


@bad_input("pretrain_bf16_on_a_cpu_without_native_bf16_warns_once_how_to_turn_it_off")
def _(tmp_path):
    """amp=bf16 (pretraining's default) where the CPU flags (given in MAE_CPU_FLAGS: this machine
    has native bf16) are an AVX2-only EPYC's: one warning naming the slowdown's record and amp=none;
    the run still trains as asked."""
    from mae_core.precision import CPU_FLAGS_VARIABLE

    out = tmp_path / "run"
    return Case(pretrain_cmd(out, "amp=bf16"), exit_code=0, env={CPU_FLAGS_VARIABLE: "fpu sse2 avx avx2 fma"},
                names=["bf16 autocast was asked for, but this CPU has no native bf16",
                       "docs/robustness.md", "To train in fp32, set amp=none"],
                check=lambda: assert_checkpoints_finite(out))


# ---------------------------------------------------------------- the test


@pytest.mark.slow
@pytest.mark.parametrize("row", sorted(ROWS))
def test_bad_input_stops_loudly_naming_the_fault(row, tmp_path):
    case = ROWS[row](tmp_path)
    try:
        run_case(row, case)
    finally:
        if case.cleanup is not None:
            case.cleanup()


def run_case(row: str, case: Case) -> None:
    env = {**helpers_tools.base_env(), **case.env}
    with tempfile.NamedTemporaryFile("w+") as log:  # a file, not a pipe: `during` may wait while it fills
        proc = helpers_tools.start(case.cmd, REPO, env, log)
        try:
            if case.during is not None:
                case.during(proc)
            proc.wait(timeout=case.timeout)
        finally:
            proc.kill()
        log.seek(0)
        output = log.read()
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
