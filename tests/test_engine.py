"""The pretraining engine on real Fashion-MNIST images with a toy MAE: schedule and optimizer
recipe, learning, exact resume, atomic checkpoints, divergence and bad-image errors, hooks, and
two gloo processes against one process with gradient accumulation."""

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch
from helpers_pretrain import REPO, toy_config, write_corrupt_png, write_image

from mae_core.checkpoint import CheckpointWriteError, NonFiniteError, load_checkpoint_file
from mae_core.config import ConfigError, ModelConfig, PretrainConfig, from_dict, override, to_dict
from mae_core.data import ImageReadError
from mae_core.distributed import init_distributed
from mae_core.engine import (
    LRSchedule,
    Pretrainer,
    accumulation_steps,
    build_optimizer,
    mae_from_record,
    model_record,
    peak_lr,
    pretrain,
)


def read_log(output_dir):
    return [json.loads(line) for line in (output_dir / "log.jsonl").read_text().splitlines()]


def step_lines(output_dir):
    return [r for r in read_log(output_dir) if "loss" in r]


# ---------------------------------------------------------------- recipe


def test_lr_schedule_warms_up_linearly_then_follows_half_cosine():
    schedule = LRSchedule(peak=1.0, min_lr=0.1, warmup_steps=10, total_steps=110)
    assert [schedule(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert schedule(9) == pytest.approx(1.0)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.55)  # halfway through the cosine: (peak + min) / 2
    assert schedule(110) == pytest.approx(0.1)
    assert schedule(35) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))


def test_lr_scales_with_the_effective_batch_and_accumulation_fills_it():
    paper = PretrainConfig()  # batch 64 per GPU, effective 4096
    assert accumulation_steps(paper, world_size=64) == 1
    assert accumulation_steps(paper, world_size=8) == 8
    assert peak_lr(paper, 4096) == pytest.approx(1.5e-4 * 16)
    with pytest.raises(ConfigError, match="effective_batch=4096 must be a multiple of batch_size=64 x 3"):
        accumulation_steps(paper, world_size=3)
    assert accumulation_steps(override(paper, {"effective_batch": None}), world_size=3) == 1
    assert peak_lr(override(paper, {"optim.lr": 1e-3}), 4096) == 1e-3


def test_weight_decay_spares_norms_biases_position_tables_and_tokens():
    model = mae_from_record(model_record(ModelConfig(arch="vit_toy_patch4", img_size=28, in_chans=1)))
    optimizer = build_optimizer(model, PretrainConfig())
    assert optimizer.defaults["betas"] == (0.9, 0.95)
    decay = {n for g in optimizer.param_groups if g["weight_decay"] == 0.05 for n in g["param_names"]}
    no_decay = {n for g in optimizer.param_groups if g["weight_decay"] == 0.0 for n in g["param_names"]}
    assert {"cls_token", "mask_token", "norm.weight", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias",
            "decoder_pred.bias"} <= no_decay
    assert {"blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "decoder_pred.weight"} <= decay
    # Fixed sin-cos tables are not trained at all.
    trained = decay | no_decay
    assert "pos_embed" not in trained and "decoder_pos_embed" not in trained
    assert trained == {n for n, p in model.named_parameters() if p.requires_grad}


def test_arch_record_rebuilds_the_same_model_for_non_square_input():
    cfg = ModelConfig(arch="vit_toy_patch4", img_size=(16, 24), in_chans=3, norm_pix_loss=True,
                      masking="block", decoder_depth=1)
    record = model_record(cfg)
    assert json.loads(json.dumps(record)) == record  # plain values only
    model = mae_from_record(record)
    assert model.grid_size == (4, 6) and model.norm_pix_loss and len(model.decoder_blocks) == 1
    copy = mae_from_record(record)
    copy.load_state_dict(model.state_dict())
    out = copy(torch.randn(2, 3, 16, 24))
    assert out.pred.shape == (2, 24, 48)


# ---------------------------------------------------------------- training


@pytest.mark.slow
def test_loss_drops_clearly_in_100_steps_on_fashion_mnist(tmp_path):
    cfg = toy_config(tmp_path, {"data.limit": 3200, "batch_size": 32, "effective_batch": 32, "epochs": 1,
                                "optim.lr": 2e-3, "optim.warmup_epochs": 0.1, "log_every": 50})
    result = pretrain(cfg)
    assert len(result.losses) == 100 and result.iteration == 100
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)


@pytest.mark.slow
def test_checkpoint_loads_safely_and_holds_the_whole_state(tmp_path):
    cfg = toy_config(tmp_path, {"epochs": 1, "data.limit": 16})
    result = pretrain(cfg)
    state = torch.load(tmp_path / "last.pth", weights_only=True)
    assert set(state) == {"model", "arch", "optimizer", "scaler", "epoch", "iteration", "rng", "config",
                          "epoch_progress"}
    assert state["epoch_progress"] == {"step": 0, "losses": [], "skipped": 0}  # saved at an epoch's end
    assert state["epoch"] == 0 and state["iteration"] == 2 == result.iteration
    assert from_dict(PretrainConfig, state["config"]) == cfg
    assert state["arch"] == model_record(cfg.model)
    assert isinstance(state["rng"][0]["torch"], torch.Tensor)
    assert state["optimizer"]["state"]  # Adam moments are there
    for name, value in result.model.state_dict().items():
        assert torch.equal(state["model"][name], value)
    assert (tmp_path / "checkpoint-0001.pth").is_file()
    assert {"tensorboard", "log.jsonl", "config.json"} <= {p.name for p in tmp_path.iterdir()}


class StopAfter:
    """An interruption: raises once the given epoch has finished (before it is saved)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, epoch, model):
        if epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_resume_continues_on_the_same_loss_curve(tmp_path):
    """2 epochs in one run == 1 epoch, interruption, resume for the second. Drop path and
    clipping are on, so the restored RNG and schedule position matter."""
    changes = {"model.drop_path_rate": 0.2, "optim.clip_grad": 0.5, "optim.warmup_epochs": 1.5}
    straight = pretrain(toy_config(tmp_path / "straight", changes))
    with pytest.raises(KeyboardInterrupt):
        pretrain(toy_config(tmp_path / "resumed", changes), hooks=[StopAfter(1)])
    assert load_checkpoint_file(tmp_path / "resumed" / "last.pth")["epoch"] == 0
    resumed = pretrain(toy_config(tmp_path / "resumed", changes), resume=tmp_path / "resumed" / "last.pth")
    n = len(resumed.losses)
    assert n == 8 and resumed.iteration == straight.iteration == 16
    assert resumed.losses == pytest.approx(straight.losses[n:], abs=1e-6)
    resumed_state = resumed.model.state_dict()
    for name, value in straight.model.state_dict().items():
        assert torch.allclose(resumed_state[name], value, atol=1e-6, rtol=0), name
    assert all("grad_norm" in r for r in step_lines(tmp_path / "resumed"))


@pytest.mark.slow
def test_a_failed_save_leaves_the_last_good_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    real_save = torch.save
    calls = []

    def save_then_fail(obj, f, *args, **kwargs):
        calls.append(getattr(f, "name", f))
        if len(calls) == 4:  # epoch 1's last.pth: half the bytes, then the disk is full
            f.write(b"\x80\x02partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_then_fail)
    with pytest.raises(CheckpointWriteError, match="No space left") as err:
        pretrain(toy_config(tmp_path))
    monkeypatch.undo()
    assert f"could not write {tmp_path / 'last.pth'}" in str(err.value)
    assert f"The last good checkpoint is {tmp_path / 'last.pth'}" in str(err.value)  # epoch 0's, untouched
    assert sorted(p.name for p in tmp_path.glob("*.pth*")) == ["checkpoint-0001.pth", "checkpoint-0002.pth",
                                                                "last.pth"]
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    assert load_checkpoint_file(tmp_path / "last.pth")["epoch"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("log_every", [1, 50])  # losses read every step / once, at the end of the epoch
def test_nan_loss_stops_with_a_clear_message_and_keeps_the_good_checkpoint(tmp_path, log_every):
    pretrain(toy_config(tmp_path, {"epochs": 1}))
    good = (tmp_path / "last.pth").read_bytes()
    # The first step blows the weights up; the loss of the second is the first non-finite one.
    diverging = toy_config(tmp_path, {"epochs": 2, "optim.lr": 1e30, "log_every": log_every})
    with pytest.raises(NonFiniteError) as err:
        pretrain(diverging, resume=tmp_path / "last.pth")
    message = str(err.value)
    # Numbered as log.jsonl numbers iterations (from 1): epoch 0 was iterations 1-8, the first
    # step of epoch 1 (iteration 9, finite loss) is logged, its successor is the bad one.
    assert "at epoch 1, iteration 10 (counted from 1, as in log.jsonl; step 2 of 8 in the epoch)" in message
    if log_every == 1:
        assert read_log(tmp_path)[-1]["iteration"] == 9
    assert str(tmp_path / "last.pth") in message and ("nan" in message or "inf" in message)
    assert (tmp_path / "last.pth").read_bytes() == good
    assert not (tmp_path / "checkpoint-0002.pth").exists()


@pytest.mark.slow
def test_non_finite_gradient_with_a_finite_loss_stops_at_its_iteration(tmp_path):
    """A gradient that overflows while the loss stays finite (a real autograd hook turns the patch
    embedding's gradient infinite on the third backward pass) stops training at that iteration,
    named by the gradient norm clipping computes, before any checkpoint holds the step."""
    cfg = toy_config(tmp_path, {"epochs": 1, "optim.clip_grad": 1.0, "log_every": 2})
    pretrainer = Pretrainer(cfg, init_distributed("cpu"), [])
    backward_passes = []

    def overflow_on_third(grad):
        backward_passes.append(grad)
        return grad * math.inf if len(backward_passes) == 3 else grad

    pretrainer.model.patch_embed.proj.weight.register_hook(overflow_on_third)
    with pytest.raises(NonFiniteError) as err:
        pretrainer.run(None)
    assert "gradient norm is inf at epoch 0, iteration 3 (counted from 1" in str(err.value)
    assert "no checkpoint was written before it" in str(err.value)
    # Iteration 2's log line was written with finite values; the line for 3-4 never came.
    lines = step_lines(tmp_path)
    assert [line["iteration"] for line in lines] == [2]
    assert math.isfinite(lines[0]["loss"]) and math.isfinite(lines[0]["grad_norm"])
    assert len(backward_passes) == 4  # the check runs at the log line, after iteration 4
    assert not list(tmp_path.glob("*.pth"))


@pytest.mark.slow
def test_unreadable_image_stops_training_or_is_skipped_and_counted(tmp_path):
    images = tmp_path / "images"
    for i in range(15):
        write_image(images / f"{i:02d}.png", size=(20, 20), seed=i)
    write_corrupt_png(images / "07_broken.png")
    changes = {"model.img_size": 16, "model.in_chans": 3, "data.dataset": "image_folder",
               "data.root": str(images), "data.mean": (0.5,) * 3, "data.std": (0.25,) * 3, "data.limit": None,
               "epochs": 1}
    with pytest.raises(ImageReadError, match="07_broken.png"):
        pretrain(toy_config(tmp_path / "strict", changes))
    result = pretrain(toy_config(tmp_path / "skip", {**changes, "data.skip_bad_images": True}))
    assert result.iteration == 2
    epoch_line = [r for r in read_log(tmp_path / "skip") if "train_loss" in r][0]
    assert epoch_line["skipped_images"] == 1


class LossProbe:
    """A monitor: the model's loss on a fixed batch, to check hooks see the trained model."""

    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, epoch, model):
        self.epochs.append((epoch, model.training))
        torch.manual_seed(0)
        with torch.no_grad():
            return {"fixed_batch_loss": model(torch.ones(2, 1, 28, 28)).loss.item()}


@pytest.mark.slow
def test_epoch_hooks_see_the_model_and_their_numbers_are_logged(tmp_path):
    probe = LossProbe()
    pretrain(toy_config(tmp_path, {"data.limit": 16}), hooks=[probe])
    assert probe.epochs == [(0, False), (1, False)]
    epoch_lines = [r for r in read_log(tmp_path) if "train_loss" in r]
    assert [r["epoch"] for r in epoch_lines] == [0, 1]
    assert all(math.isfinite(r["fixed_batch_loss"]) for r in epoch_lines)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/lr", "monitor/fixed_batch_loss"} <= set(events.Tags()["scalars"])


@pytest.mark.slow
def test_knn_monitor_plugs_in_through_the_config(tmp_path):
    """The online k-NN monitor of mae_app.probe, named in `epoch_hooks` like any other hook."""
    files = [(split, label, i) for split, n in (("train", 4), ("val", 2)) for label in "ab" for i in range(n)]
    for seed, (split, label, i) in enumerate(files):
        write_image(tmp_path / "cls" / split / label / f"{i}.png", size=(20, 20), seed=seed)
    monitor = {"target": "mae_app.probe.KNNMonitorHook", "train_root": str(tmp_path / "cls" / "train"),
               "val_root": str(tmp_path / "cls" / "val"), "img_size": 16, "k": 3, "every": 2,
               "mean": (0.5,) * 3, "std": (0.25,) * 3}
    changes = {"model.img_size": 16, "model.in_chans": 3, "data.dataset": "image_folder",
               "data.root": str(tmp_path / "cls" / "train"), "data.mean": (0.5,) * 3, "data.std": (0.25,) * 3,
               "epoch_hooks": [monitor]}
    pretrain(toy_config(tmp_path / "run", changes))
    epoch_lines = [r for r in read_log(tmp_path / "run") if "train_loss" in r]
    assert "knn_acc" not in epoch_lines[0]  # every=2: after the second epoch only
    assert 0.0 <= epoch_lines[1]["knn_acc"] <= 1.0


def test_hook_targets_in_the_config_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="no on_epoch_end"):
        pretrain(toy_config(tmp_path, {"epoch_hooks": [{"target": "collections.OrderedDict"}]}))
    with pytest.raises(ConfigError, match="cannot be imported"):
        pretrain(toy_config(tmp_path, {"epoch_hooks": [{"target": "mae_core.nothing.Here"}]}))


@pytest.mark.slow
def test_bf16_autocast_trains_on_cpu(tmp_path):
    result = pretrain(toy_config(tmp_path, {"amp": "bf16", "epochs": 1, "data.limit": 16}))
    assert all(math.isfinite(x) for x in result.losses)
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    with pytest.raises(ConfigError, match="fp16.*needs CUDA"):
        pretrain(toy_config(tmp_path, {"amp": "fp16"}))


# ---------------------------------------------------------------- distributed


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_accumulation(tmp_path):
    """Effective batch 8: one process, 4 images x 2 accumulation steps, against torchrun with two
    processes, 2 images x 2 accumulation steps each (no_sync on the first). Same images, views
    and masks (per-sample seeds), so the same gradients (logged norms) and weights."""
    common = {"epochs": 1, "data.limit": 32, "effective_batch": 8, "optim.clip_grad": 1e9}
    single_cfg = toy_config(tmp_path / "single", {**common, "batch_size": 4})
    single = pretrain(single_cfg)
    ddp_cfg = override(single_cfg, {"batch_size": 2, "output_dir": str(tmp_path / "ddp")})
    config_file = tmp_path / "ddp_config.py"
    config_file.write_text("from mae_core.config import PretrainConfig, from_dict\n"
                           f"config = from_dict(PretrainConfig, {to_dict(ddp_cfg)!r})\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "tools" / "pretrain.py"), "--config", str(config_file)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "effective batch 8 (2 per process x 2 processes x 2 accumulation)" in proc.stderr
    ddp_steps, single_steps = step_lines(tmp_path / "ddp"), step_lines(tmp_path / "single")
    assert len(ddp_steps) == len(single_steps) == 4
    for a, b in zip(ddp_steps, single_steps, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    ddp_state = load_checkpoint_file(tmp_path / "ddp" / "last.pth")
    assert len(ddp_state["rng"]) == 2
    for name, value in single.model.state_dict().items():
        assert torch.allclose(ddp_state["model"][name], value, atol=1e-5, rtol=0), name


# ---------------------------------------------------------------- preemption


def preempt_at_step(monkeypatch, step: int, sig=signal.SIGTERM) -> None:
    """The process sends itself `sig` while optimizer step `step` (from 1, across epochs) runs, as
    a scheduler would: the run finishes that step, then stops."""
    real_step, calls = Pretrainer.train_step, []

    def train_step(self, batches):
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), sig)
        return real_step(self, batches)

    monkeypatch.setattr(Pretrainer, "train_step", train_step)


@pytest.mark.slow
def test_preempted_mid_epoch_with_accumulation_resumes_on_the_same_curve(tmp_path, monkeypatch):
    """Two micro-batches per step, drop path and clipping on, stopped at step 11 (step 3 of epoch
    1): last.pth holds that step and the epoch's position; the resumed run skips the 3 x 2 batches
    already seen and ends with the uninterrupted run's losses, log and weights."""
    changes = {"model.drop_path_rate": 0.2, "optim.clip_grad": 0.5, "batch_size": 4, "effective_batch": 8}
    straight = pretrain(toy_config(tmp_path / "straight", changes))
    preempt_at_step(monkeypatch, 11)
    stopped = pretrain(toy_config(tmp_path / "run", changes))
    monkeypatch.undo()
    assert stopped.preempted_by == "SIGTERM" and stopped.iteration == 11 and stopped.epoch == 0
    state = load_checkpoint_file(tmp_path / "run" / "last.pth")
    assert state["iteration"] == 11 and state["epoch"] == 0 and state["epoch_progress"]["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run's handler is gone
    resumed = pretrain(toy_config(tmp_path / "run", changes), resume="last.pth")
    assert resumed.preempted_by is None and resumed.iteration == straight.iteration == 16
    assert stopped.losses + resumed.losses == straight.losses  # exactly
    assert read_log(tmp_path / "run") == read_log(tmp_path / "straight")
    resumed_state = resumed.model.state_dict()
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed_state[name], value), name


@pytest.mark.slow
def test_preempted_at_an_epochs_last_step_ends_the_epoch_first(tmp_path, monkeypatch):
    """SIGUSR1 during an epoch's last step: the epoch ends as usual (its line, its numbered
    checkpoint) and the run stops there, at the start of the next epoch."""
    preempt_at_step(monkeypatch, 8, signal.SIGUSR1)
    stopped = pretrain(toy_config(tmp_path))
    assert stopped.preempted_by == "SIGUSR1" and stopped.iteration == 8 and stopped.epoch == 0
    assert load_checkpoint_file(tmp_path / "last.pth")["epoch_progress"]["step"] == 0
    assert (tmp_path / "checkpoint-0001.pth").is_file() and "train_loss" in read_log(tmp_path)[-1]


def worker_pids(launcher_pid: int) -> dict[int, int]:
    """RANK -> pid of torchrun's worker processes (Linux /proc)."""
    from pathlib import Path

    pids = {}
    for task in Path(f"/proc/{launcher_pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            rank = next(int(v[5:]) for v in environ if v.startswith(b"RANK="))
            pids[rank] = int(child)
    return pids


@pytest.mark.slow
def test_under_torchrun_a_signal_to_one_rank_stops_every_rank_after_the_same_step(tmp_path):
    """SIGTERM to rank 1 alone in mid-epoch: both ranks stop after the same step (an all-reduced
    flag) and exit 143; last.pth holds that step and both ranks' RNG; resumed under torchrun, the
    log equals the uninterrupted two-process run's."""
    import time

    cfg = toy_config(tmp_path / "run", {"epochs": 1, "data.limit": 256, "batch_size": 4, "effective_batch": 8,
                                        "model.drop_path_rate": 0.2})
    config_file = tmp_path / "config.py"
    config_file.write_text("from mae_core.config import PretrainConfig, from_dict\n"
                           f"config = from_dict(PretrainConfig, {to_dict(cfg)!r})\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

    def torchrun(*args):
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                str(REPO / "tools" / "pretrain.py"), "--config", str(config_file), *args]

    straight = subprocess.run(torchrun(f"output_dir={tmp_path / 'straight'}"), env=env, capture_output=True,
                              text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-3000:]
    with open(tmp_path / "stopped.log", "w+") as output:
        proc = subprocess.Popen(torchrun(), env=env, stdout=output, stderr=subprocess.STDOUT, text=True)
        log = tmp_path / "run" / "log.jsonl"
        while proc.poll() is None and (not log.is_file() or len(log.read_text().splitlines()) < 3):
            time.sleep(0.02)
        os.kill(worker_pids(proc.pid)[1], signal.SIGTERM)
        proc.wait(timeout=300)
        output.seek(0)
        text = output.read()
    assert text.count("exitcode  : 143") == 2, text[-3000:]  # torchrun's report of both workers
    assert "a preemption signal (on another process) received: stopped after iteration" in text
    state = load_checkpoint_file(tmp_path / "run" / "last.pth")
    assert len(state["rng"]) == 2 and 0 < state["iteration"] == len(read_log(tmp_path / "run")) < 16
    resumed = subprocess.run(torchrun("--resume"), env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert read_log(tmp_path / "run") == read_log(tmp_path / "straight")
