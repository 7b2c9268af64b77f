"""The layers of docs/architecture.md, checked on the source: every import of every .py file is
parsed (ast, so an import inside a function counts too) and held against what its layer may use."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = {"detectron2", "mmengine", "mmseg", "mmcv"}
ADAPTERS = {"detection", "segmentation"}
TOOLS = {p.stem for p in (REPO / "tools").glob("*.py")} | {"tools"}
MAX_TOOL_LINES = 150


def python_files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (absolute imports; relative ones stay inside
    their own package)."""
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                roots.add(arg.value.split(".")[0])
    return roots


FORBIDDEN = {
    "mae_core": FRAMEWORKS | ADAPTERS | {"mae_app"} | TOOLS,
    "detection": {"mae_app"} | TOOLS,
    "segmentation": {"mae_app"} | TOOLS,
    "mae_app": TOOLS,
    "configs": TOOLS,
}


@pytest.mark.parametrize("layer", FORBIDDEN)
def test_each_layer_imports_only_what_is_below_it(layer):
    offences = {str(p.relative_to(REPO)): sorted(imported_roots(p) & FORBIDDEN[layer])
                for p in python_files(layer)}
    assert {k: v for k, v in offences.items() if v} == {}


def test_no_tool_imports_another_tool():
    offences = {p.name: sorted(imported_roots(p) & TOOLS) for p in python_files("tools")}
    assert {k: v for k, v in offences.items() if v} == {}


def path_hacks(path: Path) -> list[str]:
    """`sys.path` edits and loading modules by file (`spec_from_file_location`)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
        if isinstance(node, ast.Attribute) and name == "path" and getattr(node.value, "id", None) == "sys":
            found.append(f"line {node.lineno}: sys.path")
        if name == "spec_from_file_location":
            found.append(f"line {node.lineno}: spec_from_file_location")
    return found


@pytest.mark.parametrize("folder", ["tools", "tests"])
def test_tools_and_tests_reach_code_by_import_not_by_path(folder):
    offences = {p.name: path_hacks(p) for p in python_files(folder)}
    assert {k: v for k, v in offences.items() if v} == {}


def test_tools_are_thin():
    lengths = {p.name: len(p.read_text().splitlines()) for p in python_files("tools")}
    assert {k: n for k, n in lengths.items() if n > MAX_TOOL_LINES} == {}


def test_the_rules_catch_what_they_forbid(tmp_path):
    """The checks fire on real offences (so a pass above means something)."""
    bad = tmp_path / "bad.py"
    bad.write_text("import sys\ndef f():\n    import mmcv.ops\n    from compare import x\n"
                   "sys.path.insert(0, '.')\nimportlib.util.spec_from_file_location('a', 'b')\n")
    assert {"mmcv", "compare", "sys"} <= imported_roots(bad)
    assert len(path_hacks(bad)) == 2
