"""MMSegmentation glue for the toolkit: importing this package registers the ViT backbone, the
layer-decay optimizer constructor, the checked datasets and transforms, the CPU-capable DDP
wrapper, the linear decode head, the non-finite guard hook, the atomic checkpoint backend and
the checked checkpoint loader, and allows mmengine checkpoints under
`torch.load(weights_only=True)`. Configs load it with `custom_imports = dict(imports=["segmentation"])`.

Modules, as detection's: backbone.py (MAEViT), catalogue.py (catalogue backbones), data.py
(checked datasets and transforms), heads.py (the linear head), optim.py (layer decay), hooks.py
(the non-finite guard),
engine.py (safe and atomic checkpoints, CPU and DDP adaptation), overrides.py (`--cfg-options`
that must name read keys), train.py (the tools' config loading, flags, one-line errors, and the
training and test runs)."""

from .backbone import MAEViT
from .data import (
    ADE20KFolderDataset,
    DatasetError,
    LoadCheckedAnnotations,
    LoadScaledImageFromFile,
    SegFolderDataset,
)
from .engine import (
    ATOMIC_BACKEND,
    AtomicLocalBackend,
    DeviceAgnosticDDP,
    adapt_config_to_device,
    init_cpu_distributed,
    register_safe_globals,
)
from .heads import LinearHead
from .hooks import NonFiniteError, NonFiniteGuardHook
from .optim import LayerDecayOptimWrapperConstructor
from .overrides import ConfigOverrideError

register_safe_globals()

__all__ = [
    "ADE20KFolderDataset",
    "ATOMIC_BACKEND",
    "AtomicLocalBackend",
    "ConfigOverrideError",
    "DatasetError",
    "DeviceAgnosticDDP",
    "LayerDecayOptimWrapperConstructor",
    "LinearHead",
    "LoadCheckedAnnotations",
    "LoadScaledImageFromFile",
    "MAEViT",
    "NonFiniteError",
    "NonFiniteGuardHook",
    "SegFolderDataset",
    "adapt_config_to_device",
    "init_cpu_distributed",
    "register_safe_globals",
]
