"""The masking sweep (tools/demo.py --masking-sweep; mae_app.demo, mae_app.report's sweep sections):
its plan pretrains every strategy with equal epochs and mask ratio, twice (pretraining seeds 0 and
1), and probes each with three seeds; its report's table, verdicts and plot come from run folders
holding real checkpoint records and TensorBoard logs written with known wall times, each row
spanning its pretraining seeds; the speed read from a real pretraining's log."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers_pretrain import toy_config
from PIL import Image

from mae_app.demo import MASKING_SWEEP, PRETRAIN_CONFIG, Demo, DemoOptions
from mae_app.report import stack_pictures, write_report
from mae_app.runs import RunError, load_run, pretraining_metrics
from mae_core.checkpoint import save_checkpoint
from mae_core.config import PretrainConfig, load_pretrain_config, override, parse_overrides, to_dict
from mae_core.engine import mae_from_record, model_record, pretrain
from mae_core.mae import extra_parameters


def test_the_sweep_pretrains_each_strategy_alike_twice_and_probes_it_with_three_seeds(tmp_path):
    demo = Demo(DemoOptions(output_dir=tmp_path, masking_sweep=True))
    plan = demo.plan()
    assert {e["run"]["task"] for e in plan} == {"cls"}  # detection and segmentation only when asked
    mae = [e for e in plan if e["run"]["backbone"] == "vit_mae"]
    cells = sorted((e["run"]["masking"], e["run"]["pretrain_seed"], e["run"]["seed"]) for e in mae)
    assert cells == sorted((name, p, seed) for name in MASKING_SWEEP for p in (0, 1) for seed in (0, 1, 2))
    assert sorted(e["run"]["seed"] for e in plan if e["run"]["backbone"] == "vit_random") == [0, 1, 2]
    assert len({e["output_dir"] for e in plan}) == len(plan) == 5 * 2 * 3 + 3
    probed = {(e["run"]["masking"], e["run"]["pretrain_seed"]): Path(e["command"][e["command"].index(
        "--checkpoint") + 1]) for e in mae}

    configs = {}
    for p in demo.pretrainings:
        command = demo.pretrain_command(p)
        assert command[2:6] == ["--config", str(PRETRAIN_CONFIG), "--output-dir", str(demo.pretrain_dir(p))]
        assert probed[p.masking, p.seed] == demo.pretrain_dir(p) / "last.pth"
        assert command[-1] == "--resume"  # an interrupted pretraining continues when the demo runs again
        cfg = override(load_pretrain_config(PRETRAIN_CONFIG), parse_overrides(command[6:-1]))
        configs[p.masking, p.seed] = cfg
        mae_from_record(model_record(cfg.model))  # the strategy and its parameters build
    assert list(configs) == [(name, seed) for name in MASKING_SWEEP for seed in (0, 1)]
    assert len(set(probed.values())) == len(configs) == 10
    assert {(c.epochs, c.model.mask_ratio, c.batch_size) for c in configs.values()} == {
        (demo.recipe.sweep_epochs, 0.75, demo.recipe.pretrain_batch)}
    assert {key: c.seed for key, c in configs.items()} == {key: key[1] for key in configs}
    assert {key: c.model.masking for key, c in configs.items()} == {key: key[0] for key in configs}
    assert configs["filtered_noise", 1].model.masking_args == {"sigma": 1.0, "band": "band"}
    assert configs["salience", 0].model.masking_args == {"measure": "contrast"}
    # The main demo's length, at which random masking is ahead of random init on the probes; the
    # sweep's random run at seed 0 is the main demo's pretraining (same settings, same folder), any
    # other is never taken for it.
    assert demo.recipe.sweep_epochs == demo.recipe.pretrain_epochs
    names = [demo.pretrain_dir(p).name for p in demo.pretrainings]
    assert names[:3] == ["mask75", "mask75_seed1", "mask75_block"] and len(set(names)) == len(names)
    assert Demo(DemoOptions(output_dir=tmp_path)).pretrain_dir(demo.main_pretraining).name == "mask75"
    shorter = Demo(DemoOptions(output_dir=tmp_path, masking_sweep=True, sweep_epochs=8, pretrain_seeds=[3]))
    assert [shorter.pretrain_dir(p).name for p in shorter.pretrainings][:2] == [
        "mask75_8ep_seed3", "mask75_block_8ep_seed3"]


def test_sweep_transfer_fine_tunes_every_strategy_and_options_refuse_mixtures(tmp_path):
    demo = Demo(DemoOptions(output_dir=tmp_path, masking_sweep=True, sweep_transfer=True, seeds=[4, 5],
                            transfer_seeds=[4], sweep_epochs=3))
    plan = demo.plan()
    dense = [e for e in plan if e["run"]["task"] != "cls"]
    # The probes run every seed, detection and segmentation only the transfer seeds.
    assert {e["run"]["seed"] for e in plan if e["run"]["task"] == "cls"} == {4, 5}
    assert sorted((e["run"]["task"], e["run"].get("masking", "-"), e["run"].get("pretrain_seed", "-"))
                  for e in dense) == sorted(
        [(task, name, seed) for task in ("det", "seg") for name in MASKING_SWEEP for seed in (0, 1)]
        + [("det", "-", "-"), ("seg", "-", "-")])
    assert len({e["output_dir"] for e in dense}) == len(dense) and {e["run"]["seed"] for e in dense} == {4}
    heldout = demo.heldout_plan(plan)  # every fine-tuned model also on the held-out scenes
    assert [e["run"]["trained_in"] for e in heldout] == [e["output_dir"] for e in dense]
    for e in dense:
        if e["run"]["backbone"] == "vit_mae":
            pretraining = next(p for p in demo.pretrainings
                               if (p.masking, p.seed) == (e["run"]["masking"], e["run"]["pretrain_seed"]))
            assert e["run"]["checkpoint"] == str(demo.pretrain_dir(pretraining) / "last.pth")
            assert "_3ep" in e["run"]["checkpoint"].split("/")[-2]
    with pytest.raises(ValueError, match="one sweep at a time"):
        DemoOptions(output_dir=tmp_path, masking_sweep=True, mask_ratio_sweep=True)
    with pytest.raises(ValueError, match="nothing without --sweep-transfer"):
        DemoOptions(output_dir=tmp_path, masking_sweep=True, transfer_seeds=[0])
    with pytest.raises(ValueError, match="belong to --masking-sweep"):
        DemoOptions(output_dir=tmp_path, sweep_transfer=True)


BATCH = 16


def write_pretraining(folder: Path, masking: str, seconds_per_step: float, steps=(2, 4, 6, 8)) -> dict:
    """A tools/pretrain.py folder: last.pth with its arch, config and per-process RNG records (no
    weights: nothing reads them), and TensorBoard loss scalars logged at `steps` every
    `seconds_per_step`, two epochs of 4 steps, between which 100 s pass (the epoch-end monitor and
    checkpoint) that the speed must not count."""
    from torch.utils.tensorboard import SummaryWriter

    changes = {"model.arch": "vit_toy_patch4", "model.img_size": 16, "model.masking": masking,
               "batch_size": BATCH, "effective_batch": BATCH}
    cfg = override(PretrainConfig(), changes)
    arch = model_record(cfg.model)
    folder.mkdir(parents=True)
    save_checkpoint({"model": {}, "arch": arch, "config": to_dict(cfg), "rng": [{}]}, folder / "last.pth")
    writer = SummaryWriter(str(folder / "tensorboard"))
    for step in steps:
        wall = 1000.0 + step * seconds_per_step + (100.0 if step > 4 else 0.0)
        writer.add_scalar("train/loss", 1.0, step, walltime=wall)
        if step in (4, 8):
            writer.add_scalar("epoch/train_loss", 1.0, step, walltime=wall + 1)
    writer.close()
    return arch


def write_probe(folder: Path, backbone: str, seed: int, knn: float, pretraining: Path | None, masking=None,
                pretrain_seed=0):
    folder.mkdir(parents=True)
    (folder / "eval_cls.json").write_text(json.dumps({"knn_acc": knn / 100, "linear_acc": (knn + 5) / 100}))
    run = {"task": "cls", "backbone": backbone, "seed": seed}
    if pretraining is not None:
        run.update(mask_ratio=0.75, masking=masking, pretrain_dir=str(pretraining),
                   pretrain_seed=pretrain_seed)
    (folder / "run.json").write_text(json.dumps(run))
    return folder


def test_report_tables_each_strategy_over_its_pretrainings_and_judges_it_by_the_rule(tmp_path):
    """Two pretrainings per strategy (the second probes 2 points higher) and three probe seeds: a
    row spans all six runs, and the verdicts are the rule on them: block behind random, hard_patches
    (+1) not separating, random masking ahead of random init."""
    speeds = {"random": 0.5, "block": 0.5, "hard_patches": 1.0}  # seconds per step of BATCH images
    knn = {"random": 41.0, "block": 31.0, "hard_patches": 42.0}
    folders, archs = [], {}
    for masking, seconds in speeds.items():
        for pretrain_seed in (0, 1):
            pretraining = tmp_path / "pretrain" / f"{masking}_{pretrain_seed}"
            archs[masking] = write_pretraining(pretraining, masking, seconds)
            for seed in (0, 1, 2):
                value = knn[masking] + seed - 1 + 2 * pretrain_seed
                folders.append(write_probe(tmp_path / "runs" / f"{masking}_{pretrain_seed}_{seed}", "vit_mae",
                                           seed, value, pretraining, masking, pretrain_seed))
    for seed in (0, 1, 2):
        folders.append(write_probe(tmp_path / "runs" / f"init_{seed}", "vit_random", seed, 20.0 + seed, None))
    pictures = []
    for i, colour in enumerate(("red", "blue")):
        pictures.append(tmp_path / f"p{i}.png")
        Image.new("RGB", (40, 20), colour).save(pictures[-1])
    figure = stack_pictures({"random": pictures, "block": pictures[:1]}, tmp_path / "pictures" / "sweep.png")
    assert Image.open(figure).size[1] > 2 * 20  # a row per strategy

    out = tmp_path / "report"
    report = write_report([load_run(f) for f in folders], out, "sweep", figures={"Masks": figure}).read_text()
    section = report.split("## Masking strategies\n")[1]
    table = section.split("\n\n")[1].splitlines()
    assert table[0] == ("| masking | seeds | k-NN acc | linear acc | pretrain img/s | img/s vs random | "
                        "extra params |")
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    rows = {row[0]: row[1:] for row in cells}
    assert list(rows) == ["random", "block", "hard_patches", "random init"]
    # batch 16 / 0.5 s; the 100 s between the epochs are left out
    # values 40, 41, 42 and 42, 43, 44: the pretraining seeds' spread is in the row's
    assert rows["random"] == ["0, 1, 2 × pretraining 0, 1", "42.0 ± 1.4", "47.0 ± 1.4", "32", "1.00", "0"]
    hard_extra = extra_parameters(mae_from_record(archs["hard_patches"]))
    assert hard_extra > 0 and rows["hard_patches"][3:] == ["16", "0.50", str(hard_extra)]
    assert rows["random init"][:2] == ["0, 1, 2", "21.0 ± 1.0"] and rows["random init"][3:] == ["—", "—", "—"]
    verdicts = section.split("\n\n")[2:4]
    assert verdicts[0].startswith("Each masking against random, and random against random init.")
    table = [[c.strip() for c in line.strip("|").split("|")] for line in verdicts[1].splitlines()]
    assert table[0] == ["comparison", "k-NN acc", "linear acc"]
    # 2 SE: 2 sqrt(2/6 + 2/6) = 1.63 between strategies, 2 sqrt(2/6 + 1/3) = 1.63 against random init
    assert table[2:] == [["block vs random", *["-10.0 (2 SE 1.6): **behind**"] * 2],
                         ["hard_patches vs random", *["+1.0 (2 SE 1.6): does not separate"] * 2],
                         ["random vs random init", *["+21.0 (2 SE 1.6): **ahead**"] * 2]]
    assert "![Masking strategies](masking_sweep.png)" in section
    assert (out / "masking_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Mask-ratio sweep" not in report  # one ratio: no sweep
    assert "## Masks\n\n![Masks](../pictures/sweep.png)" in report
    # the probes' table names the strategy
    assert "| vit_mae (mask 75%, hard_patches) | 0, 1, 2 × pretraining 0, 1 |" in report


def test_speed_needs_log_lines_within_an_epoch(tmp_path):
    write_pretraining(tmp_path / "ends", "random", 0.5, steps=(4, 8))  # logged only at epoch ends
    assert pretraining_metrics(tmp_path / "ends") == {"extra_params": 0}
    (tmp_path / "bare").mkdir()
    with pytest.raises(Exception, match="last.pth"):
        pretraining_metrics(tmp_path / "bare")
    folder = tmp_path / "no_log"
    write_pretraining(folder, "random", 0.5, steps=())
    with pytest.raises(RunError, match="no train/loss scalars"):
        pretraining_metrics(folder)


@pytest.mark.slow
def test_speed_of_a_real_pretraining_is_read_from_its_own_log(tmp_path):
    """16 steps of 8 images; the speed leaves out epoch ends and start-up, so it is at least the
    images over the whole call's time."""
    start = time.perf_counter()
    pretrain(toy_config(tmp_path, {"log_every": 2, "model.masking": "hard_patches"}))
    elapsed = time.perf_counter() - start
    metrics = pretraining_metrics(tmp_path)
    assert metrics["pretrain_img_per_s"] >= 16 * 8 / elapsed
    assert metrics["extra_params"] > 0
