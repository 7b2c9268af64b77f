"""Preemption notices: a scheduler's SIGTERM (or SLURM's SIGUSR1 before a time limit) asks a run to
stop soon. Pretraining treats either as a request, not a kill: it finishes the step it is in,
writes a checkpoint at that iteration and exits with `PREEMPTED_EXIT`; `--resume` continues from
that step on the same curve (docs/robustness.md)."""

from __future__ import annotations

import signal
import threading

import torch

from .distributed import all_reduce_sum

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# 128 + SIGTERM: what a shell reports for a job ended by SIGTERM, whichever of the two signals came,
# so a scheduler or a requeue script reads it as "stopped from outside", not as a failure of the run.
PREEMPTED_EXIT = 128 + signal.SIGTERM


class PreemptionNotice:
    """While entered (on the main thread), SIGTERM and SIGUSR1 are noted instead of ending the
    process; `requested` says whether one came, agreed by all processes of a run."""

    def __init__(self):
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> PreemptionNotice:
        if threading.current_thread() is threading.main_thread():  # Python sets handlers there only
            for sig in PREEMPTION_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: one set outside Python
        self._previous.clear()

    def _note(self, signum: int, frame) -> None:
        self.received = self.received or signal.Signals(signum).name

    def requested(self, device: torch.device, world_size: int) -> str | None:
        """The signal's name if this process or any other got one, else None. Under torchrun the
        signal reaches the processes at different steps; one all-reduce of a flag per call makes
        every process stop after the same step (their checkpoint gathers every process's state)."""
        if world_size == 1:
            return self.received
        flag = torch.tensor(float(self.received is not None), device=device)
        if all_reduce_sum(flag).item() == 0:
            return None
        return self.received or "a preemption signal (on another process)"


def ignore_preemption_signals(worker_id: int | None = None) -> None:
    """A data-loading worker's `worker_init_fn`: a scheduler signals every process of the job, and
    a worker ended by it would fail the batch the main process is still finishing."""
    for sig in PREEMPTION_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
