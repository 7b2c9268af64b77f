"""MMSegmentation glue for the toolkit: importing this package registers the ViT backbone, the
layer-decay optimizer constructor, the checked datasets and transforms, the CPU-capable DDP
wrapper and the atomic checkpoint backend, and allows mmengine checkpoints under
`torch.load(weights_only=True)`. Configs load it with `custom_imports = dict(imports=["segmentation"])`."""

from .backbone import MAEViT
from .data import ADE20KFolderDataset, DatasetError, LoadCheckedAnnotations, SegFolderDataset
from .optim import LayerDecayOptimWrapperConstructor
from .runtime import (
    ATOMIC_BACKEND,
    AtomicLocalBackend,
    DeviceAgnosticDDP,
    adapt_config_to_device,
    init_cpu_distributed,
    register_safe_globals,
)

register_safe_globals()

__all__ = [
    "ADE20KFolderDataset",
    "ATOMIC_BACKEND",
    "AtomicLocalBackend",
    "DatasetError",
    "DeviceAgnosticDDP",
    "LayerDecayOptimWrapperConstructor",
    "LoadCheckedAnnotations",
    "MAEViT",
    "SegFolderDataset",
    "adapt_config_to_device",
    "init_cpu_distributed",
    "register_safe_globals",
]
