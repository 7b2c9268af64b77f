"""What the toolkit does with bad input: one row per case, each running a real tool (or library
entry point) on a deliberately bad input and asserting that it stops with a non-zero exit and a
message naming what is at fault (the file, key, step or value). README, "On bad input", states
the promise these rows check.

A row is a function `(tmp_path) -> Case`, registered with `@bad_input`; it builds the bad input in
`tmp_path` and says which command to run and what the output must name."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@dataclass
class Case:
    cmd: list[str]  # run from the repository root
    names: list[str]  # substrings the combined stdout+stderr must contain (file, key, step, value)
    exit_code: int | None = None  # None: any non-zero exit
    absent: list[str] = field(default_factory=list)  # substrings that must NOT appear (e.g. a metric)
    check: Callable[[], None] | None = None  # extra assertions on files after the run
    timeout: int = 600


ROWS: dict[str, Callable[[Path], Case]] = {}


def bad_input(name: str):
    def register(fn: Callable[[Path], Case]):
        assert name not in ROWS, f"duplicate bad-input row {name}"
        ROWS[name] = fn
        return fn

    return register


def tool(name: str, *args) -> list[str]:
    return [PY, str(REPO / "tools" / name), *map(str, args)]


# ---------------------------------------------------------------- rows: pretraining


# ---------------------------------------------------------------- rows: detection


# ---------------------------------------------------------------- rows: segmentation


# ---------------------------------------------------------------- rows: images and data


# ---------------------------------------------------------------- the test


@pytest.mark.slow
@pytest.mark.parametrize("row", sorted(ROWS))
def test_bad_input_stops_loudly_naming_the_fault(row, tmp_path):
    case = ROWS[row](tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(case.cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=case.timeout)
    output = proc.stdout + proc.stderr
    if case.exit_code is None:
        assert proc.returncode != 0, f"{row}: exit 0 on bad input\n{output[-3000:]}"
    else:
        assert proc.returncode == case.exit_code, f"{row}: exit {proc.returncode}\n{output[-3000:]}"
    for name in case.names:
        assert name in output, f"{row}: output does not name {name!r}\n{output[-3000:]}"
    for text in case.absent:
        assert text not in output, f"{row}: output contains {text!r}\n{output[-3000:]}"
    if case.check is not None:
        case.check()
