"""`python -m mae_app.env`: versions of the stack, and a non-zero exit naming what is missing and
the command that installs it."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

SETUP = "make setup (or: bash scripts/setup_env.sh)"


def _version(module: str) -> str:
    mod = importlib.import_module(module)
    try:
        return mod.__version__
    except AttributeError:  # pycocotools has no __version__
        return importlib.metadata.version(module)


def _detectron2_c() -> str:
    try:
        importlib.import_module("detectron2._C")
        return "compiled _C"
    except ImportError:
        return "no _C (COCO evaluation via pycocotools)"


def _mmcv_ops() -> str:
    """Which mmcv flavour is installed: scripts/setup_env.sh's default has no compiled ops, and says
    what that means (nothing the toolkit runs needs them)."""
    import mmcv._ext
    from mmcv.ops import nms  # noqa: F401  asks mmcv._ext for its op functions, as `import mmseg` does

    if mmcv._ext.__file__.endswith(".so"):
        return "compiled ops"
    return ("without compiled ops: the toolkit's models use none; calling one stops naming it; "
            "make setup MMCV_OPS=1 builds them")


CHECKS = [
    # (label, module, extra probe, how to install)
    ("torch", "torch", None, "pip install torch==2.14.1 torchvision==0.29.1"),
    ("torchvision", "torchvision", None, "pip install torch==2.14.1 torchvision==0.29.1"),
    ("timm", "timm", None, "pip install 'timm>=1.0'"),
    ("pycocotools", "pycocotools", None, "pip install pycocotools"),
    ("fvcore", "fvcore", None, "pip install fvcore"),
    ("detectron2", "detectron2", _detectron2_c, SETUP + " — sal-detectron2==0.7.2 unless one imports"),
    ("mmcv", "mmcv", _mmcv_ops, SETUP + " — builds mmcv 2.1.0 (MMCV_OPS=1: with compiled ops)"),
    ("mmengine", "mmengine", None, "pip install mmengine==0.10.7"),
    ("mmseg", "mmseg", None, "pip install mmsegmentation==1.2.2 ftfy regex"),
]


def main() -> int:
    missing = []
    for label, module, probe, install in CHECKS:
        try:
            line = f"{label:12s} {_version(module)}"
            if probe is not None:
                line += f"  ({probe()})"
            print(line)
        except Exception as exc:  # any import failure means the piece is unusable
            print(f"{label:12s} MISSING: {type(exc).__name__}: {exc}")
            missing.append((label, install))
    import torch

    cuda = f"visible: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "not visible"
    print(f"{'cuda':12s} {cuda}")
    for label, install in missing:
        print(f"error: {label} is missing or broken; install it with: {install}", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
