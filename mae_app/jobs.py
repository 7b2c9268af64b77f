"""Running a plan: a JSON list of {"run": {...}, "adds": {...}, "output_dir": DIR, "command": [argv...]}
entries, each run as a child process with its log in its folder and a `.done` marker on success,
several at a time with the cores shared out between them.

The command is a tool that leaves its own run record (mae_core.run_record) in DIR; "run" is what
the plan expects of it (task, backbone, seed: checked against the tool's record), and "adds" the
fields the plan adds to that record (the demo's pretraining settings). A plan's folder belongs to
it: one without `.done` (an interrupted run) is cleared before its run starts again."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from mae_app.runs import RunError, read_json
from mae_core.run_record import RUN_FILE, read_run_record, write_run_record

# The fields of the plan's "run" that the tool's own record must agree with: what ran, and the
# transfer protocol (mae_core.run_record.protocol_fields) where the plan names one.
CHECKED_FIELDS = ("task", "backbone", "seed", "label_fraction", "label_count", "subset_seed", "frozen")


def thread_env(threads: int) -> dict[str, str]:
    """This process's environment for a child tool that may use `threads` torch threads (OpenMP
    reads OMP_NUM_THREADS once, when torch starts)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


def run_entry(entry: dict, threads: int = 1) -> int:
    """Runs the command in a cleared folder with its output in `stdout.txt` and `threads` torch
    threads; on success adds the plan's fields to the tool's run record and marks success."""
    folder = Path(entry["output_dir"])
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    with open(folder / "stdout.txt", "w") as log:
        code = subprocess.call(entry["command"], stdout=log, stderr=subprocess.STDOUT,
                               env=thread_env(threads))
    if code == 0:
        add_to_record(folder, entry)
        (folder / ".done").touch()
    return code


def add_to_record(folder: Path, entry: dict) -> None:
    """The plan's "adds" written into the record the tool left, after checking that the tool ran
    what the plan says (`CHECKED_FIELDS`)."""
    record = read_run_record(folder)
    if record is None:
        raise RunError(f"{' '.join(entry['command'])} left no {RUN_FILE} in {folder}")
    expected = entry.get("run", {})
    wrong = {k: (expected[k], record.get(k)) for k in CHECKED_FIELDS
             if k in expected and expected[k] != record.get(k)}
    if wrong:
        raise RunError(f"{folder / RUN_FILE}: the tool ran something other than the plan's run: "
                       + ", ".join(f"{k} {v[1]!r}, planned {v[0]!r}" for k, v in wrong.items()))
    write_run_record(folder, {**record, **entry.get("adds", {})})


def execute_plan(plan_file: Path, rerun: bool = False, jobs: int = 1) -> list[Path]:
    """Runs every plan entry whose output folder has no finished run yet, `jobs` at a time, the
    cores shared out between them; returns the run folders in plan order."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm

    plan = read_json(plan_file)
    if not isinstance(plan, list):
        raise RunError(f"{plan_file}: expected a JSON list of {{run, output_dir, command}}")
    for i, entry in enumerate(plan):
        missing = {"run", "output_dir", "command"} - set(entry)
        if missing:
            raise RunError(f"{plan_file}: entry {i} lacks {sorted(missing)}")
    todo = [e for e in plan if rerun or not (Path(e["output_dir"]) / ".done").is_file()]
    with tqdm(total=len(plan), initial=len(plan) - len(todo), desc="runs", unit="run") as bar, \
            ThreadPoolExecutor(max(1, jobs)) as pool:
        threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
        futures = {pool.submit(run_entry, entry, threads): entry for entry in todo}
        for future in as_completed(futures):
            entry, code = futures[future], future.result()
            run = entry.get("run", {})
            if code != 0:
                pool.shutdown(cancel_futures=True)
                raise RunError(f"run {' '.join(entry['command'])} failed with exit code {code}; "
                               f"see {Path(entry['output_dir']) / 'stdout.txt'}")
            bar.set_postfix_str(f"finished {run.get('task')} {run.get('backbone')} seed {run.get('seed', 0)}")
            bar.update(1)
    return [Path(e["output_dir"]) for e in plan]
