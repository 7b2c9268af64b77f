"""The mmcv that scripts/setup_env.sh installs. By default it has no compiled ops: its `mmcv._ext` is
scripts/mmcv_ext_standin.py, which lets `import mmseg` work and stops any op that is called, naming it.
These tests hold both flavours to what they promise: every class the toolkit's segmentation configs
name resolves (so nothing they build needs an op at import), a compiled-only op either computes
(MMCV_OPS=1) or stops naming itself and the way to a full build (the default). One training step of
the tiny UperNet under mmengine's Runner is tests/test_stack_mmseg.py's."""

from __future__ import annotations

from pathlib import Path

import mmcv._ext
import mmseg.registry
import pytest
import torch
import torchvision
from mmengine.config import Config
from mmengine.registry import Registry, init_default_scope

ROOT = Path(__file__).resolve().parents[1]
SEG_CONFIGS = sorted((ROOT / "configs" / "segmentation").glob("*.py"))
COMPILED = mmcv._ext.__file__.endswith(".so")


def config_types(node, path: str = "") -> list[tuple[str, str]]:
    """(where, type name) for every `type=` string in a config, at any depth."""
    found = []
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            found.append((path, node["type"]))
        for key, value in node.items():
            found += config_types(value, f"{path}.{key}" if path else key)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found += config_types(value, f"{path}.{i}")
    return found


def resolves(type_name: str) -> bool:
    registries = [r for r in vars(mmseg.registry).values() if isinstance(r, Registry)]
    return any(registry.get(type_name) is not None for registry in registries)


@pytest.mark.parametrize("config", SEG_CONFIGS, ids=lambda p: p.stem)
def test_every_type_a_segmentation_config_names_resolves(config):
    init_default_scope("mmseg")
    cfg = Config.fromfile(config)  # its custom_imports load the toolkit's modules
    types = config_types(cfg.to_dict())
    assert any(where.startswith("model") for where, _ in types)
    missing = [(where, name) for where, name in types if not resolves(name)]
    assert not missing, f"{config.name}: types that do not resolve: {missing}"


def test_compiled_only_op_computes_or_stops_naming_itself():
    from mmcv.ops import nms

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    if COMPILED:  # boxes 0 and 1 overlap with IoU 81/119
        _, keep = nms(boxes, scores, iou_threshold=0.5)
        assert keep.tolist() == [0, 2]
        assert keep.tolist() == torchvision.ops.nms(boxes, scores, 0.5).tolist()
        return
    with pytest.raises(RuntimeError, match=r"mmcv op 'nms' needs mmcv's compiled ops.*MMCV_OPS=1"):
        nms(boxes, scores, iou_threshold=0.5)


def test_stand_in_keeps_module_attributes_missing():
    """The import system and hasattr probes must not mistake the stand-in for a package."""
    assert not hasattr(mmcv._ext, "__path__")
    assert callable(mmcv._ext.roi_align_forward)
