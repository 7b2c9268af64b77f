"""Every command block (```bash) and config snippet (```python) of README.md and docs/*.md is run.

Commands run in document order, one document per test, in a workspace of their own (a copy of
configs/, the tools, and tiny data and checkpoints made here), so that a command finds what the
commands above it made: a `--resume` after a run of its tool must resume that run (not start
afresh), `--eval-only` and `test_seg.py` must find the checkpoint that training wrote.

Where the real thing needs a GPU, COCO, ADE20K, ImageNet or ViT-B, a tiny twin runs instead: the
same tool with the same flags, only sizes and paths swapped by ONE table, `TWINS` (and `SIZES`,
what each tool gets appended to make it small). A command no row maps fails the test; a command
run elsewhere (the demo, the benchmarks, the make targets, the GPU script, pytest) is named in
`ELSEWHERE` with the reason; here its tool must exist, and tests/test_readme_commands.py runs its
argument parser on its exact arguments.

Python blocks: a Detectron2 LazyConfig (imports `detectron2`) or mmengine config (`_base_`) is
written where its first line's comment says (`# configs/detection/my_run.py ...`), loaded by the
toolkit's loader, built and run forward on a 64 px image; any other block runs as a script in the
workspace, after the same table."""

from __future__ import annotations

import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import helpers_tools
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PYTHONS = ("python", ".venv/bin/python", "python3")

# ------------------------------------------------------------------------------------------------
# The substitution table: (regular expression, replacement, why). Applied in this order to each
# command (continuations joined) and to each python block. `{name}` in a replacement is a path of
# the workspace (`Workspace.paths`) or a free port.
TWINS: list[tuple[str, str, str]] = [
    # Configs: ViT-B/L/H -> the tiny CPU configs (their output folder kept: see SIZES).
    (r"configs/detection/mask_rcnn_vit_(base|large|huge)_100ep\.py",
     "configs/detection/mask_rcnn_vit_tiny_cpu.py", "ViT-B/L/H Mask R-CNN needs a GPU"),
    (r"configs/segmentation/upernet_vit_(base|large)_512x512_160k_ade20k(_mmseg_layout)?\.py",
     "configs/segmentation/upernet_vit_tiny_cpu.py", "ViT-B/L UperNet needs a GPU"),
    # Devices and machines: one CPU process (gloo) stands in for GPUs and nodes.
    (r"^srun (--\S+ \S+ )*bash -c '(.*)'\s*(#.*)?$", r"\2", "no SLURM: the task's command itself"),
    (r"^srun (--\S+ \S+ )*", "", "no SLURM: the task's command itself"),
    (r"--num-gpus \d+", "--num-gpus 1", "GPUs"),
    (r"--nproc[-_]per[-_]node[= ]\d+", "--nproc-per-node 1", "GPUs"),
    (r"--nnodes \S+", "--nnodes 1", "one machine"),
    (r"--num-machines \S+", "--num-machines 1", "one machine"),
    (r"--machine-rank \S+", "--machine-rank 0", "one machine"),
    (r"--node-rank \S+", "--node-rank 0", "one machine"),
    (r"--dist-url \S+", "--dist-url auto", "one machine"),
    (r"--rdzv-endpoint \S+", "--rdzv-endpoint 127.0.0.1:{port}", "one machine"),
    (r"--master-addr \S+ --master-port \S+", "--master-addr 127.0.0.1 --master-port {port}", "one machine"),
    (r"^torchrun (?!.*--(rdzv-endpoint|master-port))", "torchrun --master-port {port} ",
     "a free port (tests run side by side)"),
    (r"--rdzv-id \S+", "--rdzv-id doc", "no SLURM job id"),
    (r"--launcher slurm", "--launcher none", "SLURM's launcher needs SLURM and CUDA"),
    (r"(--launcher \S+ .*)train_dataloader\.batch_size=1\b", r"\1train_dataloader.batch_size=2",
     "one image per GPU is the recipe's batch on 16 GPUs (SyncBN); one process needs 2 for its BatchNorm"),
    (r"\$\(scontrol show hostnames [^)]*\)", "127.0.0.1", "no SLURM"),
    # Data and weights: tiny ones made by the test.
    (r"DETECTRON2_DATASETS=\S+", "DETECTRON2_DATASETS={datasets}", "COCO 2017"),
    (r"data\.root=/data/imagenet/train", "data.root={images}", "ImageNet"),
    (r"train\.mae_checkpoint=mae_pretrain_vit_base\.pth", "train.mae_checkpoint={mae_det}",
     "the official ViT-B MAE -> an MAE of the tiny detection backbone's shape"),
    (r"(model\.pretrained|model\.backbone\.init_cfg\.checkpoint)=(mae_pretrain_vit_base|vit_base_mae)\.pth",
     r"\1={mae_seg}",
     "the official ViT-B MAE -> an MAE of the tiny segmentation backbone's shape"),
    (r"iter_160000\.pth", "iter_2.pth", "the last checkpoint of the shortened schedule (SIZES)"),
    (r"mae_visualize_vit_large\.pth", "{mae_toy}", "the official ViT-L MAE with decoder -> the toy MAE"),
    (r"--arch vit_large_patch16", "--arch vit_toy_patch4", "ViT-L -> the toy ViT"),
    # Python blocks: ViT-B -> the toy ViT (4 blocks, 96 wide, patch 4), released weights -> its own.
    (r'create_mae\("vit_base_patch16"\)', 'create_mae("vit_toy_patch4", img_size=32)', "ViT-B at 224 px"),
    (r'"vit_base_patch16"', '"vit_toy_patch4"', "ViT-B in a python block"),
    (r"torch\.randn\(8, 3, 224, 224\)", "torch.randn(8, 3, 32, 32)", "224 px -> 32 px (the toy MAE above)"),
    (r'"mae_pretrain_vit_base\.pth"', '"{mae_toy}"', "the official ViT-B MAE -> an MAE of the toy ViT"),
    (r'timm\.create_model\("vit_base_patch16_224\.mae", pretrained=True\)',
     'timm.create_model("vit_base_patch16_224.mae", pretrained=False, patch_size=4, embed_dim=96, depth=4, '
     'num_heads=3)', "no download: timm's model at the toy ViT's size"),
    (r'ViTMAEForPreTraining\.from_pretrained\("facebook/vit-mae-base"\)',
     "ViTMAEForPreTraining(ViTMAEForPreTraining.config_class(image_size=32, patch_size=4, hidden_size=96, "
     "num_hidden_layers=4, num_attention_heads=3, intermediate_size=384, decoder_hidden_size=64, "
     "decoder_num_hidden_layers=2, decoder_num_attention_heads=4, decoder_intermediate_size=256, "
     "layer_norm_eps=1e-6))", "no download: Hugging Face's model at the toy MAE's size"),
]

# What each tool gets appended, so that the twin is small: (arguments, why).
SIZES: dict[str, tuple[list[str], str]] = {
    "pretrain.py": (["model.arch=vit_toy_patch4", "model.img_size=32", "model.decoder_embed_dim=32",
                     "model.decoder_depth=1", "model.decoder_num_heads=2", "batch_size=4",
                     "effective_batch=4", "data.limit=8", "data.num_workers=0", "epochs=1", "save_every=1",
                     "log_every=1", "device=cpu", "amp=none"], "a toy ViT, 8 images, one epoch"),
    "train_det.py": (["train.max_iter=2", "train.eval_period=2", "train.checkpointer.period=2"],
                     "two iterations"),
    "train_seg.py": (["--cfg-options", "train_cfg.max_iters=2", "train_cfg.val_interval=2",
                      "default_hooks.checkpoint.interval=2"], "two iterations"),
}

# Commands run by other tests (too long, or needing a GPU, for this one). Here only their tool must
# exist; tests/test_readme_commands.py runs each one's argument parser on its exact arguments.
ELSEWHERE: dict[str, str] = {
    "make": "make's targets wrap the set-up, the suite itself, the 23-minute demo and the benchmarks",
    "tools/demo.py": "23 minutes and more; its plans: tests/test_demo.py, tests/test_masking_sweep.py; each "
                     "step's tool is run by its own tests",
    "tools/bench_pretrain.py": "tests/test_bench.py",
    "tools/bench_backbone.py": "tests/test_bench.py",
    "tools/bench_demo_epoch.py": "tests/test_bench.py",
    "tools/bench_masking.py": "tests/test_bench.py",
    "tools/gpu_check.sh": "needs a CUDA GPU",
    "pytest": "the test suite itself (make test)",
}
# Log lines that show a `--resume` started afresh instead of continuing the run above it.
FRESH_STARTS = ("nothing to resume", "No checkpoint found")
# ------------------------------------------------------------------------------------------------


@dataclass
class Block:
    document: Path
    language: str  # "bash" or "python"
    text: str
    line: int

    def __str__(self) -> str:
        return f"{self.document.relative_to(REPO)}:{self.line}"


def blocks(document: Path) -> list[Block]:
    """The ```bash and ```python blocks of a markdown file (other fences are text: trees, output)."""
    text = document.read_text()
    return [Block(document, m[1], m[2], text[: m.start()].count("\n") + 1)
            for m in re.finditer(r"^```(bash|python)\n(.*?)^```", text, flags=re.S | re.M)]


def commands(block: Block) -> list[str]:
    """A bash block's command lines as written (continuations joined; comment and blank lines
    dropped): the table applies to the text, then the shell's word splitting."""
    lines = (" ".join(line.split()) for line in block.text.replace("\\\n", " ").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def words_of(command: str, paths: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """(leading `VAR=value` assignments, the words) of a command's twin."""
    words = shlex.split(twin(command, paths), comments=True)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, words


PATH_NAMES = ("datasets", "images", "mae_det", "mae_seg", "mae_toy")


def twin(text: str, paths: dict[str, str]) -> str:
    """`text` with every row of TWINS applied (per line, so that `^` anchors a command)."""
    out = []
    for line in text.splitlines():
        for pattern, replacement, _ in TWINS:
            line = re.sub(pattern, lambda m, r=replacement: m.expand(r.format(**paths)), line)
        out.append(line)
    return "\n".join(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Workspace:
    root: Path
    paths: dict[str, str]
    env: dict[str, str]
    tools_run: set[str] = field(default_factory=set)  # a --resume after one of these must resume

    def glob(self, word: str) -> list[str]:
        """A word as the shell expands it: a pattern that matches names the matches, else itself."""
        matches = sorted(str(p.relative_to(self.root)) for p in self.root.glob(word)) if "*" in word else []
        return matches or [word]

    def run(self, argv: list[str], extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`argv` in the workspace, its stdout and stderr together in `.stdout` (helpers_tools: a
        tool is forked from a preloaded interpreter where nothing it sees can differ)."""
        return helpers_tools.run(argv, self.root, {**self.env, **(extra_env or {})}, timeout=600)


def make_workspace(root: Path) -> Workspace:
    """configs/ copied (snippets are written beside their base), tools/ linked, and the tiny data
    and checkpoints the table names: COCO-format sets where the tiny detection config and the
    README's custom-data command look, ADE-layout sets where the tiny segmentation config and
    docs/datasets.md look, an image folder for pretraining and inference, MAE checkpoints of both
    tiny backbones' shapes."""
    from helpers_coco import make_coco
    from helpers_seg import make_shapes_dataset

    from mae_core.checkpoint import save_checkpoint
    from mae_core.mae import create_mae

    shutil.copytree(REPO / "configs", root / "configs")
    (root / "tools").symlink_to(REPO / "tools")
    for folder in ("datasets/tiny_coco", "my_coco"):
        make_coco(root / folder, "train", 4)
        make_coco(root / folder, "val", 2, seed=1)
    for folder in ("data/tiny_seg", "data/my_seg"):
        make_shapes_dataset(root / folder, n_train=2, n_val=1)
    images = root / "images"
    shutil.copytree(root / "datasets/tiny_coco/images", images)
    shutil.copytree(images, root / "datasets/imagenet/train")  # the pretraining configs' default
    for name in ("img1.jpg", "img2.jpg", "photo.jpg"):
        shutil.copy(images / "val_000.png", root / name)
    det = create_mae("vit_base_patch16", embed_dim=96, depth=4, num_heads=3, decoder_embed_dim=32,
                     decoder_depth=1, decoder_num_heads=2)  # configs/detection/mask_rcnn_vit_tiny_cpu.py
    seg = create_mae("vit_toy_patch4", patch_size=8, decoder_embed_dim=32, decoder_depth=1,
                     decoder_num_heads=2)  # configs/segmentation/upernet_vit_tiny_cpu.py
    toy = create_mae("vit_toy_patch4")  # the official files' stand-in: encoder and decoder
    paths = {
        "datasets": str(root / "datasets"),
        "images": str(images),
        "mae_det": str(save_checkpoint({"model": det.state_dict()}, root / "mae_tiny_det.pth")),
        "mae_seg": str(save_checkpoint({"model": seg.state_dict()}, root / "mae_tiny_seg.pth")),
        "mae_toy": str(save_checkpoint({"model": toy.state_dict()}, root / "mae_toy.pth")),
    }
    (root / "build_and_forward.py").write_text(BUILD_AND_FORWARD)
    return Workspace(root, paths, helpers_tools.base_env())


def tool_of(words: list[str]) -> str:
    """The script a command runs (`python -m pytest`: pytest)."""
    if len(words) > 2 and words[1] == "-m":
        return words[2]
    return next((w for w in words if w.endswith((".py", ".sh"))), words[0])


def elsewhere(words: list[str]) -> str | None:
    """The ELSEWHERE key that names the command, if any."""
    return next((key for key in ELSEWHERE if key == words[0] or tool_of(words).endswith(key)), None)


def run_command(ws: Workspace, command: str, where: Block) -> None:
    """One command of a bash block, as its twin; `export` sets the environment of the next ones."""
    env, words = words_of(command, {**ws.paths, "port": str(free_port())})
    if words[0] == "export":
        key, value = words[1].split("=", 1)
        ws.env[key] = value
        return
    if elsewhere(words):
        check_elsewhere(ws, words, where)
        return
    if words[0] not in (*PYTHONS, "torchrun"):
        pytest.fail(f"{where}: no twin for `{command}`: add a row to TWINS or ELSEWHERE")
    tool = Path(tool_of(words)).name
    words = [*words[:1], *(expanded for word in words[1:] for expanded in ws.glob(word))]
    argv = ([sys.executable, "-m", "torch.distributed.run", *words[1:]] if words[0] == "torchrun"
            else [sys.executable, *words[1:]])
    argv += SIZES.get(tool, ([], ""))[0] + keep_output_folder(command, words)
    started = time.monotonic()
    proc = ws.run(argv, extra_env=env)
    print(f"{time.monotonic() - started:6.1f} s  {where}: {command}")
    log = proc.stdout
    assert proc.returncode == 0, f"{where}: `{command}`\nran as {shlex.join(argv)}\n{log[-6000:]}"
    if "--resume" in words and tool in ws.tools_run:
        assert not any(line in log for line in FRESH_STARTS), (
            f"{where}: `{command}` does not resume the run above it\n{log[-3000:]}")
    ws.tools_run.add(tool)


def keep_output_folder(command: str, words: list[str]) -> list[str]:
    """A swapped config keeps the real config's output folder, so the commands below find it."""
    real = re.search(r"configs/(detection|segmentation)/(\S+)\.py", command)
    if not real or f"/{real[2]}.py" in " ".join(words):
        return []
    if real[1] == "detection" and not any(w.startswith("train.output_dir=") for w in words):
        return [f"train.output_dir=output/{real[2]}"]
    seg_tool = re.search(r"(train|test)_seg\.py", command)
    if real[1] == "segmentation" and "--work-dir" not in words and seg_tool:
        # test_seg.py's default work dir is the config's name + "_test" (never the training run's)
        return ["--work-dir", f"work_dirs/{real[2]}" + ("_test" if "test_seg.py" in command else "")]
    return []


def check_elsewhere(ws: Workspace, words: list[str], where: Block) -> None:
    """A command another test runs: its make target or tool exists."""
    if words[0] == "make":
        targets = re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), flags=re.M)
        assert set(words[1:]) <= set(targets), f"{where}: make has no target {words[1:]}"
    elif tool_of(words) != "pytest":
        assert (REPO / tool_of(words)).is_file(), f"{where}: {tool_of(words)} does not exist"


def snippet_path(ws: Workspace, block: Block, index: int, suffix: str) -> Path:
    named = re.match(r"#\s*(configs/\S+\.py)", block.text)
    return ws.root / (named[1] if named else f"configs/{suffix}/doc_snippet_{index}.py")


def run_python(ws: Workspace, block: Block, index: int) -> None:
    code = twin(block.text, ws.paths)
    if re.search(r"^(from|import) detectron2", code, flags=re.M):
        kind = "detection"
    elif re.search(r"^_base_ *=", code, flags=re.M):
        kind = "segmentation"
    else:
        script = ws.root / f"snippet_{index}.py"
        script.write_text(code)
        proc = ws.run([sys.executable, str(script)])
        assert proc.returncode == 0, f"{block}: the python block fails\n{proc.stdout[-4000:]}"
        return
    path = snippet_path(ws, block, index, kind)
    path.write_text(code)
    proc = ws.run([sys.executable, str(ws.root / "build_and_forward.py"), kind, str(path)])
    assert proc.returncode == 0, f"{block}: the {kind} config does not build and run\n{proc.stdout[-4000:]}"
    assert "FORWARD OK" in proc.stdout


# Runs in a fresh interpreter in the workspace: the config loaded as the tools load it, the model
# built and run forward on one 64 px image.
BUILD_AND_FORWARD = r"""
import sys, torch
kind, path = sys.argv[1:]
if kind == "detection":
    from detectron2.config import instantiate
    from detection.overrides import load_lazy_config
    model = instantiate(load_lazy_config(path, []).model).eval()
    with torch.no_grad():
        [out] = model([{"image": torch.randint(0, 255, (3, 64, 64)).float(), "height": 64, "width": 64}])
    assert out["instances"].image_size == (64, 64)
else:
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    from segmentation.data import TEST_SETS, TRAINING_SETS, check_head_classes
    from segmentation.train import load_mmseg_config
    cfg = load_mmseg_config(path)
    check_head_classes(cfg, {**TRAINING_SETS, **TEST_SETS})
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64), mode="tensor")
    assert logits.shape[-2:] == (16, 16), logits.shape
print("FORWARD OK")
"""


def test_every_document_block_is_found_and_every_command_has_a_twin():
    """The extraction itself, and the table's reach: every command of every block either maps to a
    runnable twin or is named in ELSEWHERE (checked without running anything)."""
    found = [b for d in DOCUMENTS for b in blocks(d)]
    assert {b.language for b in found} == {"bash", "python"}
    for block in (b for b in found if b.language == "bash"):
        for command in commands(block):
            _, words = words_of(command, {**dict.fromkeys(PATH_NAMES, "x"), "port": "1"})
            assert words[0] in (*PYTHONS, "torchrun", "export") or elsewhere(words), (
                f"{block}: no twin for `{command}`")


@pytest.mark.slow
@pytest.mark.parametrize("document", [d for d in DOCUMENTS if blocks(d)], ids=lambda d: d.name)
def test_document_blocks_run(document, tmp_path):
    ws = make_workspace(tmp_path)
    for index, block in enumerate(blocks(document)):
        if block.language == "python":
            run_python(ws, block, index)
            continue
        for command in commands(block):
            run_command(ws, command, block)
