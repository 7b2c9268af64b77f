"""Config files and overrides, tools/pretrain.py end to end, and tools/visualize_mae.py (its
library, mae_app.visualize, and the tool end to end)."""

import json

import helpers_tools
import numpy as np
import pytest
import torch
from helpers_pretrain import REPO, require_fashion_mnist, toy_config
from PIL import Image

from mae_app import visualize
from mae_core.checkpoint import CheckpointError, export_backbone
from mae_core.config import (
    ConfigError,
    DataConfig,
    PretrainConfig,
    closest_keys,
    from_dict,
    load_pretrain_config,
    override,
    parse_overrides,
    to_dict,
)
from mae_core.engine import mae_from_record, model_record, pretrain
from mae_core.mae import MAEOutput, MaskedAutoencoder, create_mae

CONFIGS = REPO / "configs" / "pretrain"


# ---------------------------------------------------------------- configs


@pytest.mark.parametrize("name,arch,epochs", [
    ("mae_vit_base", "vit_base_patch16", 800),
    ("mae_vit_large", "vit_large_patch16", 800),
    ("mae_vit_huge", "vit_huge_patch14", 800),
    ("mae_vit_large_1600ep", "vit_large_patch16", 1600),
    ("mae_vit_huge_1600ep", "vit_huge_patch14", 1600),
])
def test_paper_recipes(name, arch, epochs):
    cfg = load_pretrain_config(CONFIGS / f"{name}.py")
    assert (cfg.model.arch, cfg.epochs) == (arch, epochs)
    assert cfg.optim.blr == 1.5e-4 and cfg.effective_batch == 4096 and cfg.optim.warmup_epochs == 40
    assert cfg.optim.betas == (0.9, 0.95) and cfg.optim.weight_decay == 0.05
    assert cfg.model.norm_pix_loss and cfg.model.mask_ratio == 0.75 and cfg.model.img_size == 224
    assert cfg.data.min_scale == 0.2 and cfg.data.hflip and cfg.output_dir.endswith(name)
    # A variant differs from its base only in the fields it names.
    base = load_pretrain_config(CONFIGS / "base.py")
    assert override(base, {"model.arch": arch, "epochs": epochs, "output_dir": cfg.output_dir}) == cfg


def test_toy_config_is_grayscale_fashion_mnist_on_cpu():
    cfg = load_pretrain_config(CONFIGS / "fashion_mnist_toy.py")
    assert cfg.model.arch == "vit_toy_patch4" and cfg.model.img_size == 28 and cfg.model.in_chans == 1
    assert cfg.data.dataset == "fashion_mnist" and len(cfg.data.mean) == 1 and cfg.device == "cpu"


def test_overrides_are_typed_and_unknown_keys_named():
    changes = parse_overrides(["optim.blr=1e-3", "model.img_size=(32, 64)", "data.root=/data/x y",
                               "optim.clip_grad=None", "data.hflip=false", "epochs=3"])
    assert changes == {"optim.blr": 1e-3, "model.img_size": (32, 64), "data.root": "/data/x y",
                       "optim.clip_grad": None, "data.hflip": False, "epochs": 3}
    cfg = override(PretrainConfig(), changes)
    assert cfg.model.img_size == (32, 64) and cfg.data.root == "/data/x y" and cfg.epochs == 3
    assert override(cfg, {"optim.warmup_epochs": 5}).optim.warmup_epochs == 5.0
    with pytest.raises(ConfigError, match="unknown config key 'optim.bl'.*blr"):
        override(cfg, {"optim.bl": 1.0})
    with pytest.raises(ConfigError, match="'epochs' expects int, got 'many'"):
        override(cfg, parse_overrides(["epochs=many"]))
    with pytest.raises(ConfigError, match="'data' is a section"):
        override(cfg, {"data": 3})
    assert override(cfg, {"data": DataConfig(root="r")}).data == DataConfig(root="r")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["epochs"])
    assert from_dict(PretrainConfig, to_dict(cfg)) == cfg


def test_closest_keys_compares_names_within_an_existing_section_and_whole_keys_otherwise():
    """The hint of every refused key (pretraining, Detectron2 and MMSegmentation overrides)."""
    keys = ["optim.lr", "optim.blr", "optim.betas", "train.max_iter", "train.amp.enabled"]
    assert closest_keys("optim.blrr", keys) == "closest existing keys: optim.blr, optim.lr"
    assert closest_keys("optim.xyz", keys) == "no existing key is close"  # "optim." alone is no match
    assert closest_keys("trian.max_iter", keys) == "closest existing keys: train.max_iter"
    with pytest.raises(ConfigError, match=r"'data\.fo\.bar' \(no existing key is close\); DataConfig has"):
        override(PretrainConfig(), {"data.fo.bar": 1})


def test_config_file_without_config_is_refused(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("cfg = 1\n")
    with pytest.raises(ConfigError, match="must assign `config = PretrainConfig"):
        load_pretrain_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_pretrain_config(tmp_path / "missing.py")


# ---------------------------------------------------------------- tools/pretrain.py


def run_tool(*args, timeout=300, tool="pretrain.py"):
    """The tool's run; its stdout and stderr together in `.stdout`."""
    return helpers_tools.run_tool(tool, *args, timeout=timeout)


@pytest.mark.slow
def test_pretrain_tool_writes_checkpoints_logs_and_tensorboard_and_resumes(tmp_path):
    require_fashion_mnist()
    quick = ["data.limit=96", "batch_size=16", "effective_batch=32", "data.num_workers=0", "log_every=1"]
    toy = CONFIGS / "fashion_mnist_toy.py"
    first = run_tool("--config", toy, "--output-dir", tmp_path, "epochs=1", *quick)
    assert first.returncode == 0, first.stdout[-3000:]
    state = torch.load(tmp_path / "last.pth", weights_only=True)
    assert state["epoch"] == 0 and state["iteration"] == 3 and state["config"]["output_dir"] == str(tmp_path)
    assert state["config"]["effective_batch"] == 32 and state["arch"]["in_chans"] == 1

    second = run_tool("--config", toy, "--output-dir", tmp_path, "epochs=2", *quick, "--resume")
    assert second.returncode == 0, second.stdout[-3000:]
    assert "epoch 2/2 done" in second.stdout and "to go" in second.stdout  # run-level ETA
    assert torch.load(tmp_path / "last.pth", weights_only=True)["iteration"] == 6
    assert (tmp_path / "checkpoint-0002.pth").is_file()  # save_every=2 in the toy config
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in lines if "train_loss" in r] == [0, 1]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = set()
    for events_file in (tmp_path / "tensorboard").iterdir():
        events = EventAccumulator(str(events_file))
        events.Reload()
        steps |= {e.step for e in events.Scalars("train/loss")}
    assert steps == {1, 2, 3, 4, 5, 6}


@pytest.mark.slow
def test_pretrain_tool_reports_bad_overrides_and_missing_checkpoints(tmp_path):
    bad_key = run_tool("--config", CONFIGS / "fashion_mnist_toy.py", "optim.blrr=1")
    assert bad_key.returncode == 1 and "error: unknown config key 'optim.blrr'" in bad_key.stdout
    # A named checkpoint must exist (a bare --resume with nothing to resume starts fresh: test_bad_inputs).
    missing = tmp_path / "nowhere.pth"
    no_ckpt = run_tool("--config", CONFIGS / "fashion_mnist_toy.py", "--output-dir", tmp_path,
                       "--resume", missing)
    assert no_ckpt.returncode == 1 and f"checkpoint {missing} does not exist" in no_ckpt.stdout


# ---------------------------------------------------------------- tools/visualize_mae.py


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_run")
    pretrain(toy_config(out, {"epochs": 1, "data.limit": 16, "model.norm_pix_loss": True}))
    return out / "last.pth"


@pytest.mark.slow
def test_visualize_writes_one_four_panel_png_per_image(toy_checkpoint, tmp_path):
    proc = run_tool(toy_checkpoint, "--num-images", "2", "--output-dir", tmp_path, tool="visualize_mae.py")
    assert proc.returncode == 0, proc.stdout
    pictures = sorted(tmp_path.glob("*.png"))
    assert proc.stdout.split() == [str(p) for p in pictures]
    assert [p.name for p in pictures] == ["sample0000_mae.png", "sample0001_mae.png"]
    picture = Image.open(pictures[0])
    # 28 px images enlarged 4x: four 112 px panels, 4 px gaps, a 14 px title strip.
    assert picture.size == (4 * 116 + 4, 112 + 14 + 4)
    grey = torch.tensor(np.array(picture.convert("L")), dtype=torch.float32)
    panels = [grey[14:126, 4 + i * 116 : 4 + i * 116 + 112] for i in range(4)]
    assert all(p.std() > 5 for p in panels)  # real pictures, not blank panels
    assert not torch.equal(panels[0], panels[1])  # masking changed the input


def test_reconstruction_undoes_norm_pix_with_each_patch_statistics():
    """A model whose predictions equal its norm-pix targets must reconstruct the image exactly."""

    class PerfectMAE(MaskedAutoencoder):
        def forward(self, imgs, mask_ratio=None, noise=None):
            _, mask, _ = self.forward_encoder(imgs, self.mask_ratio, noise)
            return MAEOutput(torch.zeros(()), self.target(imgs), mask)

    model = PerfectMAE(img_size=(8, 12), patch_size=4, in_chans=3, embed_dim=16, depth=1, num_heads=2,
                       decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, norm_pix_loss=True)
    imgs = torch.randn(2, 3, 8, 12)
    panels = visualize.reconstruct(model, imgs)
    assert torch.allclose(panels["reconstruction"], imgs, atol=1e-4)
    visible = 1 - panels["mask"]
    assert panels["mask"].mean().item() == pytest.approx(0.75, abs=0.1)
    assert torch.equal(panels["masked"], imgs * visible)
    assert torch.allclose(panels["reconstruction + visible"], imgs, atol=1e-4)


def test_visualize_refuses_checkpoints_without_decoder_or_arch(tmp_path):
    record = model_record(toy_config(tmp_path).model)
    model = mae_from_record(record)
    encoder_only = export_backbone({"model": model.state_dict(), "arch": record}, tmp_path / "encoder.pth")
    with pytest.raises(CheckpointError, match="no decoder weights"):
        visualize.load_mae(encoder_only)
    official = tmp_path / "official.pth"
    torch.save({"model": model.state_dict()}, official)
    with pytest.raises(CheckpointError, match="name it with --arch"):
        visualize.load_mae(official)
    # An official-layout file loads once its size is named.
    paper_layout = create_mae("vit_toy_patch4")
    torch.save({"model": paper_layout.state_dict()}, official)
    rebuilt, _ = visualize.load_mae(official, arch="vit_toy_patch4")
    assert torch.equal(rebuilt.decoder_pred.weight, paper_layout.decoder_pred.weight)


def test_visualize_tool_prints_errors(tmp_path):
    proc = run_tool(tmp_path / "none.pth", tool="visualize_mae.py")
    assert proc.returncode == 1 and "does not exist" in proc.stdout
