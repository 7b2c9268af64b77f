"""Stand-in for mmcv's compiled `mmcv._ext`, put into the mmcv wheel that scripts/setup_env.sh builds
without ops (MMCV_WITH_OPS=0: a quick build instead of a long C++ one).

Why: `import mmseg` imports a few names from `mmcv.ops` (point_sample, CrissCrossAttention, PSAMask,
sigmoid_focal_loss), and each `mmcv.ops` module asks `mmcv._ext` for its op functions at import time.
None of the toolkit's models calls a compiled op (UperNet, the pyramid neck, the losses and the data
pipeline are plain PyTorch; Mask R-CNN uses torchvision's ops), so every op here is a function that
stops with the op's name and how to get a full build, should anything ever call one."""

FULL_BUILD = ("run `make setup MMCV_OPS=1` (compiles mmcv's ops once, a long C++ build, cached in "
              "~/.cache/mae-toolkit/wheels) or install an mmcv 2.1.0 wheel built with ops for your torch")


class MissingCompiledOp(RuntimeError):
    """A compiled mmcv op was called, but this mmcv was installed without compiled ops."""


def _missing(name: str):
    def op(*args, **kwargs):
        raise MissingCompiledOp(f"mmcv op '{name}' needs mmcv's compiled ops, and this mmcv was installed "
                                f"without them (the toolkit's default); {FULL_BUILD}")
    op.__name__ = name
    return op


def __getattr__(name: str):
    # Module dunders (__path__, __spec__, ...) must stay missing, or the import system is misled.
    if name.startswith("__"):
        raise AttributeError(name)
    return _missing(name)
