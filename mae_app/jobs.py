"""Running a plan: a JSON list of {"run": {...run.json...}, "output_dir": DIR, "command": [argv...]}
entries, each run as a child process with its log in its folder and a `.done` marker on success,
several at a time with the cores shared out between them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from mae_app.runs import RUN_FILE, RunError, read_json


def thread_env(threads: int) -> dict[str, str]:
    """This process's environment for a child tool that may use `threads` torch threads (OpenMP
    reads OMP_NUM_THREADS once, when torch starts)."""
    return {**os.environ, "OMP_NUM_THREADS": str(threads)}


def run_entry(entry: dict, threads: int = 1) -> int:
    """Writes the run record, runs the command with its output in `stdout.txt` and `threads` torch
    threads, marks success."""
    folder = Path(entry["output_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RUN_FILE).write_text(json.dumps({**entry["run"], "output_dir": str(folder)}, indent=2))
    with open(folder / "stdout.txt", "w") as log:
        code = subprocess.call(entry["command"], stdout=log, stderr=subprocess.STDOUT,
                               env=thread_env(threads))
    if code == 0:
        (folder / ".done").touch()
    return code


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
            run = entry["run"]
            if code != 0:
                pool.shutdown(cancel_futures=True)
                raise RunError(f"run {' '.join(entry['command'])} failed with exit code {code}; "
                               f"see {Path(entry['output_dir']) / 'stdout.txt'}")
            bar.set_postfix_str(f"finished {run.get('task')} {run.get('backbone')} seed {run.get('seed', 0)}")
            bar.update(1)
    return [Path(e["output_dir"]) for e in plan]
