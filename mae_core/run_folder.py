"""One run per output folder, on every path (pretraining, detection, segmentation).

A run claims its folder before it writes anything: it creates `run.lock` exclusively (an atomic
create; the file holds the process id, host, start time and command) and removes it when it ends,
also on an error. A second run that finds the claim is refused, naming the holder. A claim whose
process is gone from this host (a killed run) is reported and taken over with `--resume` (or
`--overwrite`); a claim from another host cannot be checked from here and stays a refusal.

A folder that holds a previous run's files (its `marks`: checkpoints, metrics) is refused without
`--resume` (continue it) or `--overwrite` (replace it). `--overwrite` deletes the previous run's
files (the marks and the logs listed with them), so the new run's logs never mix with the old
run's; anything else in the folder is left alone. Under DDP the main process claims and checks;
the other processes learn the outcome through `share` and stop with the same message."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from .errors import UserError

log = logging.getLogger(__name__)

CLAIM_FILE = "run.lock"


class RunFolderError(UserError):
    """An output folder that another run holds or has used; the message names it and the way on."""


def this_process() -> dict:
    """What a claim says about the run that holds it."""
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)}


def describe(holder: dict) -> str:
    return (f"process {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command')}")


def read_claim(path: Path) -> dict:
    """The holder a claim file names; empty while its holder is still writing it."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def is_stale(holder: dict) -> bool:
    """A claim whose process is gone from this host (another host's cannot be checked)."""
    return holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) \
        and not process_alive(holder["pid"])


def other_folder(flag: str) -> str:
    return f"choose another output folder ({flag})"


def claim_folder(folder: Path, take_over_stale: bool, folder_flag: str) -> dict:
    """Creates `folder/run.lock` exclusively and returns the claim written there; a stale claim is
    taken over when `take_over_stale` (--resume / --overwrite), a live one is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    lock, mine = folder / CLAIM_FILE, this_process()
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_claim(lock)
            if not is_stale(holder):
                raise RunFolderError(
                    f"{folder} is claimed by another run ({describe(holder)}; claim file {lock}). Wait for "
                    f"that run to end and pass --resume to continue it or --overwrite to replace it, or "
                    f"{other_folder(folder_flag)}. A claim from another host cannot be checked from here: "
                    f"if that run has ended, delete {lock}") from None
            if not take_over_stale:
                raise RunFolderError(
                    f"{folder} holds the claim of a run that is no longer running ({describe(holder)}; its "
                    f"process is gone from this host; claim file {lock}). Pass --resume to take it over and "
                    f"continue that run, --overwrite to replace it, or {other_folder(folder_flag)}") from None
            take_over(lock, holder)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(mine, f)
        return mine
    raise RunFolderError(f"{folder}: another run claimed it while this one took over a stale claim ({lock})")


def take_over(lock: Path, holder: dict) -> None:
    """Moves a stale claim aside (an atomic rename, so two runs taking it over cannot both win);
    if what was moved is not the stale claim seen (another run claimed in between), puts it back."""
    aside = lock.with_name(f"{CLAIM_FILE}.stale-{os.getpid()}")
    try:
        os.replace(lock, aside)
    except FileNotFoundError:
        return
    if read_claim(aside) != holder:
        os.replace(aside, lock)
        return
    aside.unlink()
    log.warning("%s: taking over the claim of a run that is no longer running (%s)", lock.parent,
                describe(holder))


def release_folder(folder: Path, claim: dict) -> None:
    """Removes the claim if it is still this run's."""
    lock = folder / CLAIM_FILE
    if read_claim(lock) == claim:
        lock.unlink()


def previous_run_files(folder: Path, patterns: Sequence[str]) -> list[Path]:
    return sorted({p for pattern in patterns for p in folder.glob(pattern)})


def check_used_folder(folder: Path, marks: Sequence[str], removed_with: Sequence[str], resume: bool,
                      overwrite: bool, folder_flag: str) -> None:
    """Refuses a folder holding a previous run's `marks` unless `resume` (the run continues it) or
    `overwrite` (its marks and `removed_with` files are deleted first, named in a warning)."""
    if resume and overwrite:
        raise RunFolderError("--resume continues the run in the output folder, --overwrite replaces it: "
                             "give one of them")
    found = previous_run_files(folder, marks)
    if not found or resume:
        return
    names = ", ".join(str(p.relative_to(folder)) for p in found)
    if not overwrite:
        raise RunFolderError(f"{folder} holds another run ({names}); pass --resume to continue it, "
                             f"--overwrite to replace it, or {other_folder(folder_flag)}")
    removed = previous_run_files(folder, [*marks, *removed_with])
    for path in removed:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    log.warning("--overwrite: deleted the previous run's %s in %s",
                ", ".join(str(p.relative_to(folder)) for p in removed), folder)


@contextmanager
def run_folder(folder: str | Path, *, marks: Sequence[str], removed_with: Sequence[str] = (),
               resume: bool, overwrite: bool, folder_flag: str, take_over: bool | None = None,
               is_main: bool = True, share: Callable[[object], list] | None = None) -> Iterator[None]:
    """The body of a run that holds `folder` (see the module docstring): the main process claims it
    and checks it is not used (`check_used_folder`; `resume`: the run continues the folder's run);
    `share` (an all-gather over the processes) tells the others, which raise the main process's
    refusal too. A stale claim is taken over when `take_over` (default: `resume or overwrite`; a
    bare --resume that finds nothing to continue still takes over). Released on leaving."""
    folder = Path(folder)
    claim, refusal = None, None
    if is_main:
        try:
            claim = claim_folder(folder, resume or overwrite if take_over is None else take_over, folder_flag)
            check_used_folder(folder, marks, removed_with, resume, overwrite, folder_flag)
        except RunFolderError as exc:
            refusal = exc
    if share is not None:
        message = next((m for m in share(None if refusal is None else str(refusal)) if m), None)
        if message and refusal is None:
            refusal = RunFolderError(message)
    try:
        if refusal is not None:
            raise refusal
        yield
    finally:
        if claim is not None:
            release_folder(folder, claim)
