"""The layers of docs/architecture.md, checked on the source: every import of every .py file is
parsed (ast, so an import inside a function counts too) and held against what its layer may use;
path tricks, private imports across packages, the tools' length and entry-point shape likewise.
`test_each_rule_catches_what_it_forbids` shows every rule failing on a sample offence."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FRAMEWORKS = {"detectron2", "mmengine", "mmseg", "mmcv"}
ADAPTERS = {"detection", "segmentation"}
PACKAGES = {"mae_core", *ADAPTERS, "mae_app", "benchmarks"}
TOOLS = {p.stem for p in (REPO / "tools").glob("*.py")} | {"tools"}
MAX_TOOL_LINES = 150
CODE_FOLDERS = [*sorted(PACKAGES), "configs", "tools", "tests"]

FORBIDDEN = {
    "mae_core": FRAMEWORKS | ADAPTERS | {"mae_app", "benchmarks"} | TOOLS,
    "detection": {"segmentation", "mae_app", "benchmarks"} | TOOLS,
    "segmentation": {"detection", "mae_app", "benchmarks"} | TOOLS,
    "mae_app": {"benchmarks"} | TOOLS,
    "benchmarks": TOOLS,
    "configs": {"mae_app", "benchmarks"} | TOOLS,
    "tests": TOOLS,
}

# The one file that may load Python source by path: a pretraining config is a Python file the user
# names (mae_core.config.load_pretrain_config), read as data, never a module of the project.
PATH_LOADERS_ALLOWED = {"mae_core/config.py": {"run_path"}}
# Library modules with a `python -m` entry, each for a reason a tool cannot serve: `make check-env`
# runs the environment check before anything else; the backbone benchmark measures each case's
# peak memory in a fresh interpreter (benchmarks.common.run_isolated).
MODULE_ENTRIES = {"mae_app/env.py", "benchmarks/backbone.py"}


def python_files(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def imported_roots(tree: ast.Module) -> set[str]:
    """Top-level names of every module the source imports (absolute imports; relative ones stay
    inside their own package), `importlib.import_module("x")` included."""
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and _called_name(node) == "import_module" and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                roots.add(arg.value.split(".")[0])
    return roots


def _called_name(node: ast.Call) -> str | None:
    return getattr(node.func, "attr", None) or getattr(node.func, "id", None)


def private_imports(tree: ast.Module, own_root: str) -> list[str]:
    """`from other_package.module import _name`: a private name reached from outside its package."""
    return [f"line {node.lineno}: {node.module}.{alias.name}"
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
            and node.module.split(".")[0] in PACKAGES and node.module.split(".")[0] != own_root
            for alias in node.names if alias.name.startswith("_")]


PATH_LOADERS = {"spec_from_file_location", "run_path", "run_module", "__import__"}
ENV_SETTERS = {"setenv", "putenv", "setdefault", "update"}


def path_hacks(tree: ast.Module, is_test: bool = False) -> list[str]:
    """Ways of reaching code other than a plain import of an installed package: `sys.path` edits,
    loading a module by file or by computed name (PATH_LOADERS), and PYTHONPATH changed in this
    process. Library code and tools never mention PYTHONPATH; a test may hand it to a child
    process in that child's `env` (the tools it starts import this checkout's packages)."""
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", "?")
        owner = getattr(getattr(node, "value", None), "id", None)
        if isinstance(node, ast.Attribute) and (owner, node.attr) == ("sys", "path"):
            found.append(f"line {line}: sys.path")
        name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
        if name in PATH_LOADERS:
            found.append(f"line {line}: {name}")
        if isinstance(node, ast.Constant) and node.value == "PYTHONPATH" and not is_test:
            found.append(f"line {line}: PYTHONPATH")
        if is_test and _sets_pythonpath(node):
            found.append(f"line {line}: PYTHONPATH set in the test's own process")
    return found


def _sets_pythonpath(node: ast.AST) -> bool:
    """x["PYTHONPATH"] = ..., or setenv/putenv/setdefault/update given "PYTHONPATH"."""
    if isinstance(node, ast.Assign | ast.AugAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(isinstance(t, ast.Subscript) and getattr(t.slice, "value", None) == "PYTHONPATH"
                   for t in targets)
    if isinstance(node, ast.Call) and _called_name(node) in ENV_SETTERS:
        names = [k.arg for k in node.keywords] + [a.value for a in node.args if isinstance(a, ast.Constant)]
        names += [k.value for a in node.args if isinstance(a, ast.Dict) for k in a.keys
                  if isinstance(k, ast.Constant)]
        return "PYTHONPATH" in names
    return False


def entry_point_problems(tree: ast.Module) -> list[str]:
    """A tool's one shape: `def main(argv=None) -> int` (parses the command line, calls library
    code, returns the exit status) and the file ending in `if __name__ == "__main__": sys.exit(main())`."""
    problems = []
    mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
    if not mains:
        problems.append("no top-level main()")
    else:
        args = mains[0].args
        if [a.arg for a in args.args] != ["argv"] or len(args.defaults) != 1 or args.kwonlyargs:
            problems.append("main's signature is not main(argv=None)")
        if not (isinstance(mains[0].returns, ast.Name) and mains[0].returns.id == "int"):
            problems.append("main is not annotated -> int")
    last = tree.body[-1] if tree.body else None
    expected = 'if __name__ == "__main__":\n    sys.exit(main())'
    if last is None or ast.unparse(last).replace("'", '"') != expected:
        problems.append('the file does not end in `if __name__ == "__main__": sys.exit(main())`')
    return problems


def has_module_entry(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.If) and "__main__" in ast.unparse(n.test) for n in tree.body)


def tool_files() -> list[Path]:
    """Python and shell tools alike."""
    return sorted(p for p in (REPO / "tools").iterdir() if p.suffix in (".py", ".sh"))


def too_long(paths: list[Path]) -> dict[str, int]:
    lengths = {p.name: len(p.read_text().splitlines()) for p in paths}
    return {name: n for name, n in lengths.items() if n > MAX_TOOL_LINES}


def benchmarks_without_tool(modules: set[str], tools: set[str]) -> set[str]:
    """benchmarks/ modules that measure (all but the shared common.py) with no tools/bench_<name>.py."""
    return {m for m in modules - {"__init__", "common"} if f"bench_{m}" not in tools}


# --- the rules on the tree ---------------------------------------------------------------------


@pytest.mark.parametrize("layer", FORBIDDEN)
def test_each_layer_imports_only_what_is_below_it(layer):
    offences = {str(p.relative_to(REPO)): sorted(imported_roots(parse(p)) & FORBIDDEN[layer])
                for p in python_files(layer)}
    assert {k: v for k, v in offences.items() if v} == {}


def test_no_tool_imports_another_tool():
    offences = {p.name: sorted(imported_roots(parse(p)) & TOOLS) for p in python_files("tools")}
    assert {k: v for k, v in offences.items() if v} == {}


@pytest.mark.parametrize("folder", [f for f in CODE_FOLDERS if f != "tests"])
def test_no_private_name_is_imported_from_another_package(folder):
    offences = {str(p.relative_to(REPO)): private_imports(parse(p), folder) for p in python_files(folder)}
    assert {k: v for k, v in offences.items() if v} == {}


@pytest.mark.parametrize("folder", CODE_FOLDERS)
def test_code_is_reached_by_import_not_by_path(folder):
    offences = {}
    for p in python_files(folder):
        rel = str(p.relative_to(REPO))
        allowed = PATH_LOADERS_ALLOWED.get(rel, set())
        found = [f for f in path_hacks(parse(p), is_test=folder == "tests")
                 if f.rpartition(": ")[2] not in allowed]
        if found:
            offences[rel] = found
    assert offences == {}


def test_tools_are_thin():
    """Shell tools too (tools/gpu_check.sh)."""
    assert "gpu_check.sh" in {p.name for p in tool_files()}
    assert too_long(tool_files()) == {}


def test_every_tool_has_the_one_entry_point_shape():
    problems = {p.name: entry_point_problems(parse(p)) for p in python_files("tools")}
    assert {k: v for k, v in problems.items() if v} == {}


def test_library_modules_run_as_modules_only_where_listed():
    """What users run is a tool; a library module with its own `__main__` is one of MODULE_ENTRIES."""
    entries = {str(p.relative_to(REPO)) for folder in PACKAGES for p in python_files(folder)
               if has_module_entry(parse(p))}
    assert entries == MODULE_ENTRIES


def test_every_benchmark_has_a_tool():
    modules = {p.stem for p in python_files("benchmarks")}
    assert benchmarks_without_tool(modules, TOOLS) == set()


# --- the rules fire on real offences (so a pass above means something) -------------------------


def _tree(source: str) -> ast.Module:
    return ast.parse(source)


def test_each_rule_catches_what_it_forbids(tmp_path):
    # Layers: a framework and a tool imported inside a function, detection from segmentation, a
    # benchmark from the application, a tool from a test, a module by computed name.
    roots = imported_roots(_tree("def f():\n    import mmcv.ops\n    from compare import x\n"
                                 "from segmentation.hooks import h\nimport benchmarks.common\n"
                                 "from demo import main\nimportlib.import_module('train_det')\n"))
    assert "mmcv" in roots & FORBIDDEN["mae_core"]
    assert "segmentation" in roots & FORBIDDEN["detection"]
    assert "benchmarks" in roots & FORBIDDEN["mae_app"]
    assert {"compare", "demo", "train_det"} <= roots & FORBIDDEN["tests"]
    # A private name across packages (not within one's own package).
    sample = _tree("from mae_core.engine import _Pretrainer\nfrom .common import _x\n")
    assert private_imports(sample, "benchmarks") == ["line 1: mae_core.engine._Pretrainer"]
    assert private_imports(_tree("from mae_core.engine import _P\n"), "mae_core") == []
    # Path tricks: sys.path, loading by file or by computed name, PYTHONPATH.
    hacks = path_hacks(_tree("import sys, runpy\nsys.path.insert(0, '.')\n"
                             "importlib.util.spec_from_file_location('a', 'b')\n"
                             "runpy.run_path('tools/demo.py')\n__import__('demo')\n"
                             "os.environ['PYTHONPATH'] = '.'\n"))
    assert sorted(h.rpartition(": ")[2] for h in hacks) == [
        "PYTHONPATH", "__import__", "run_path", "spec_from_file_location", "sys.path"]
    in_tests = _tree("os.environ['PYTHONPATH'] = '.'\nmonkeypatch.setenv('PYTHONPATH', '.')\n"
                     "os.environ.update(PYTHONPATH='.')\nenv = {**os.environ, 'PYTHONPATH': '.'}\n")
    lines = sorted(h.split(":")[0] for h in path_hacks(in_tests, is_test=True))
    assert lines == ["line 1", "line 2", "line 3"]
    # The entry-point shape.
    assert len(entry_point_problems(_tree("def main(args):\n    pass\nif __name__ == '__main__':\n"
                                          "    main()\n"))) == 3
    assert entry_point_problems(_tree("import sys\ndef main(argv=None) -> int:\n    return 0\n"
                                      "if __name__ == '__main__':\n    sys.exit(main())\n")) == []
    # A library module run as a module; a benchmark without its tool; a shell tool too long.
    assert has_module_entry(_tree("if __name__ == '__main__':\n    main()\n"))
    assert not has_module_entry(_tree("def main():\n    pass\n"))
    assert benchmarks_without_tool({"common", "pretrain", "sweep"}, {"bench_pretrain"}) == {"sweep"}
    long = tmp_path / "long.sh"
    long.write_text("echo\n" * (MAX_TOOL_LINES + 1))
    assert too_long([long]) == {"long.sh": MAX_TOOL_LINES + 1}
