"""Every command the README and the docs (docs/*.md) show still works: each is run in a cheap form,
so a renamed tool, a removed flag, a missing config file or a config key that no longer exists
fails here; and every doc is linked from the README, its entry point.

Commands are the lines of the ```bash blocks (continuations joined, comments dropped) and the
inline code spans that start like a command. The cheap forms:

- `make TARGET`: `make -n TARGET` (the target exists; nothing runs);
- `python -m MODULE`: the module is importable;
- `[.venv/bin/]python tools/X.py ARGS` and `torchrun [OPTS] tools/X.py ARGS`: the tool runs as
  `__main__` in a subprocess until its argument parser returns, on the README's own arguments
  (so every flag is checked by the tool's real parser, and its --help text renders), then stops
  before doing any work; config files the arguments name must exist, and for the segmentation
  tools the config is loaded with the `--cfg-options` applied (every key checked).
  torchrun's own options go through torchrun's parser."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import helpers_tools
import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PYTHONS = ("python", ".venv/bin/python", "python3")
STARTS = (*PYTHONS, "torchrun", "make")

# Runs a tool until its argparse parser returns (whichever parse_* method the tool calls; the
# outermost call, so parse_args still refuses unknown arguments), then reports the parsed
# arguments as JSON. The tool never gets to do any work.
DRIVER = r"""
import argparse, json, runpy, sys
from pathlib import Path

class Parsed(BaseException):
    pass

depth = 0

def stop_after(method):
    original = getattr(argparse.ArgumentParser, method)

    def parse(self, *args, **kwargs):
        global depth
        depth += 1
        try:
            result = original(self, *args, **kwargs)
        finally:
            depth -= 1
        if depth == 0:
            self.format_help()  # what --help prints must render too
            raise Parsed(result)
        return result

    setattr(argparse.ArgumentParser, method, parse)

for method in ("parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args"):
    stop_after(method)
tool, args = sys.argv[1], sys.argv[2:]
sys.argv = [tool, *args]
try:
    runpy.run_path(tool, run_name="__main__")
except Parsed as parsed:
    result = parsed.args[0]
else:
    sys.exit(f"{tool} finished without parsing its arguments with argparse")
namespace, unknown = result if isinstance(result, tuple) else (result, [])
if unknown:
    sys.exit(f"{tool}: arguments its parser does not know: {unknown}")
namespace = vars(namespace)
values = [v for value in namespace.values() for v in (value if isinstance(value, list) else [value])]
missing = [str(v) for v in values if str(v).startswith("configs/") and not Path(v).is_file()]
if missing:
    sys.exit(f"{tool}: config files that do not exist: {missing}")
if Path(tool).name in ("train_seg.py", "test_seg.py") and Path(namespace["config"]).is_file():
    from segmentation.train import load_mmseg_config
    load_mmseg_config(namespace["config"], cfg_options=namespace["cfg_options"],
                      amp=namespace.get("amp", False))
print("PARSED " + json.dumps(namespace, default=str))
"""


def _inline_spans(text: str) -> list[str]:
    outside_blocks = re.sub(r"```.*?```", "", text, flags=re.S)
    return [span for span in re.findall(r"`([^`\n]+)`", outside_blocks) if span.split()[0] in STARTS]


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks (backslash continuations joined, `#` comments dropped)
    and the inline spans that start with python, torchrun or make."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in STARTS:
                commands.append(shlex.join(words))
    return list(dict.fromkeys(commands + _inline_spans(text)))


README_COMMANDS = readme_commands(README.read_text())
DOC_COMMANDS = [c for doc in DOCS for c in readme_commands(doc.read_text())]
COMMANDS = list(dict.fromkeys(README_COMMANDS + DOC_COMMANDS))


def test_the_readme_commands_are_found():
    """The extraction itself: every tool the README's code blocks invoke, and the two make targets;
    the docs add commands of their own."""
    tools = {Path(w).name for c in README_COMMANDS for w in shlex.split(c) if w.endswith(".py")}
    assert {"pretrain.py", "visualize_mae.py", "train_det.py", "infer_det.py", "train_seg.py",
            "test_seg.py", "demo.py", "compare.py"} <= tools
    assert "make demo" in README_COMMANDS and "make test" in README_COMMANDS
    assert any("--cfg-options" in c and c.endswith(".pth") for c in README_COMMANDS)  # continuation joined
    doc_tools = {Path(w).name for c in DOC_COMMANDS for w in shlex.split(c) if w.endswith(".py")}
    assert {"bench_pretrain.py", "bench_backbone.py", "bench_demo_epoch.py", "train_det.py"} <= doc_tools


def test_every_doc_is_linked_from_the_readme():
    """The README is the entry point: a doc it does not link is a doc nobody finds."""
    linked = set(re.findall(r"\]\((docs/[^)#\s]+\.md)(?:#[^)]*)?\)", README.read_text()))
    assert DOCS, "no docs/*.md found"
    unlinked = [f"docs/{doc.name}" for doc in DOCS if f"docs/{doc.name}" not in linked]
    assert not unlinked, f"docs the README does not link: {unlinked}"


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _split_launcher(words: list[str]) -> tuple[list[str], str, list[str]]:
    """(launcher options, tool script, tool arguments) of a python or torchrun command."""
    script = next(i for i, w in enumerate(words) if w.endswith(".py"))
    return words[1:script], words[script], words[script + 1 :]


@pytest.fixture(scope="session")
def driver(tmp_path_factory) -> Path:
    """DRIVER as a file, so that helpers_tools can fork it from its preloaded interpreter."""
    path = tmp_path_factory.mktemp("driver") / "parse_only.py"
    path.write_text(DRIVER)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_works_in_its_cheap_form(command, driver):
    words = shlex.split(command)
    if words[0] == "make":
        proc = _run(["make", "-n", *words[1:]])
        assert proc.returncode == 0, f"{command}: {proc.stderr}"
        return
    if words[1] == "-m":
        proc = _run([sys.executable, "-c", f"import importlib.util as u; assert u.find_spec({words[2]!r})"])
        assert proc.returncode == 0, f"{command}: module {words[2]} not found\n{proc.stderr}"
        return
    launcher, script, args = _split_launcher(words)
    assert (REPO / script).is_file(), f"{command}: {script} does not exist"
    if words[0] == "torchrun":
        torchrun = "import sys, torch.distributed.run as r; r.get_args_parser().parse_args(sys.argv[1:])"
        proc = _run([sys.executable, "-c", torchrun, *launcher, script, *args])
        assert proc.returncode == 0, f"{command}: torchrun refuses its options\n{proc.stderr}"
    proc = helpers_tools.run([sys.executable, str(driver), script, *args], REPO, helpers_tools.base_env(),
                             timeout=300)
    assert proc.returncode == 0, f"{command}:\n{proc.stdout[-4000:]}"
    parsed = json.JSONDecoder().raw_decode(proc.stdout.split("PARSED ", 1)[1])[0]
    assert parsed, f"{command}: no arguments parsed"


CUSTOM_DATA = "dataloader.train.dataset.json_file="


@pytest.mark.slow
def test_readme_custom_detection_data_command_runs(tmp_path, monkeypatch):
    """The README's custom-data command, run where it names its files (a generated 2-category COCO
    set in my_coco/, an MAE checkpoint of the tiny backbone's shape): the ViT-B config it names
    takes its overrides as plain keys and builds its datasets from these files, with categories that
    agree with the model; the tiny CPU config trains on them for one iteration and evaluates."""
    from detectron2.config import instantiate
    from helpers_coco import make_coco

    from detection.data import check_categories
    from detection.overrides import load_lazy_config
    from mae_core.checkpoint import save_checkpoint
    from mae_core.mae import create_mae

    [command] = [c for c in COMMANDS if CUSTOM_DATA in c]
    _, script, args = _split_launcher(shlex.split(command))
    config = args[args.index("--config-file") + 1]
    overrides = [a for a in args if "=" in a]
    settings = dict(a.split("=", 1) for a in overrides)
    monkeypatch.chdir(tmp_path)
    train_json, images = make_coco(Path(settings["dataloader.train.dataset.json_file"]).parent, "train", 4)
    val_json, _ = make_coco(Path(settings["dataloader.test.dataset.json_file"]).parent, "val", 2, seed=1)
    assert {str(train_json), str(val_json), str(images)} == {
        settings[f"dataloader.{split}.dataset.{key}"] for split in ("train", "test")
        for key in ("json_file", "image_root")}
    mae = create_mae("vit_base_patch16", embed_dim=96, depth=4, num_heads=3, decoder_embed_dim=32,
                     decoder_depth=1, decoder_num_heads=2)  # the tiny config's backbone
    save_checkpoint({"model": mae.state_dict()}, settings["train.mae_checkpoint"])

    cfg = load_lazy_config(str(REPO / config), overrides)
    assert check_categories(cfg, training=True) == ["square", "disc"]
    for split, json_file in (("train", train_json), ("test", val_json)):
        loaded = instantiate(cfg.dataloader[split].dataset)
        listed = [img["file_name"] for img in json.loads(json_file.read_text())["images"]]
        assert sorted(Path(d["file_name"]).name for d in loaded) == listed

    tiny = REPO / "configs/detection/mask_rcnn_vit_tiny_cpu.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / script), "--config-file", str(tiny), *overrides,
                           "train.max_iter=1", "train.output_dir=out"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "Backbone initialised from MAE checkpoint mae_pretrain_vit_base.pth" in proc.stdout + proc.stderr
    assert "bbox" in json.loads((tmp_path / "out" / "eval_results.json").read_text())
