"""Detectron2 hooks and checkpointables that `tools/train_det.py` adds to the standard ones, so a
run that goes wrong stops loudly and a killed run resumes exactly.

- `NonFiniteGuard` stops at the first non-finite gradient norm, before the optimizer step writes
  it into the weights; Detectron2 itself stops at a non-finite loss (`FloatingPointError`), which
  `run_training` reports the same way. Both name the iteration as `metrics.json` and the log do.
- `FinalEvalHook` is Detectron2's `EvalHook` without the final evaluation after a failed last step
  (upstream evaluates whenever `iter + 1 >= max_iter`, which a step that raised also satisfies).
- `TrainingState` puts the sampler's seed and every random generator's state into the checkpoint,
  so that the resumed run draws what the uninterrupted one would have drawn."""

from __future__ import annotations

import logging

import numpy as np
import torch
from detectron2.engine import HookBase, hooks
from detectron2.utils import comm
from torch import nn

from mae_core import random_state
from mae_core.distributed import unwrap

from .engine import NonFiniteError


class NonFiniteGuard(HookBase):
    """After each backward pass, the total gradient norm must be finite. Not under AMP: there a
    non-finite scaled gradient is routine, and the grad scaler skips that step itself (the loss
    check still applies). All processes see the same all-reduced gradients, so all stop together."""

    def __init__(self, model: nn.Module, checkpointer):
        self._params = [p for p in unwrap(model).parameters() if p.requires_grad]
        self._checkpointer = checkpointer

    def after_backward(self):
        if getattr(self.trainer, "grad_scaler", None) is not None:
            return
        norm = torch.nn.utils.get_total_norm([p.grad for p in self._params if p.grad is not None])
        if not torch.isfinite(norm):
            raise NonFiniteError(
                f"training stopped at iteration {self.trainer.iter}: the gradient norm is {norm.item()} "
                f"(the loss or its gradient overflowed; lower the learning rate?). The weights were not "
                f"updated with it. {last_checkpoint_note(self._checkpointer)}"
            )


def last_checkpoint_note(checkpointer) -> str:
    last = checkpointer.get_checkpoint_file() if checkpointer is not None else ""
    return f"Last (finite) checkpoint: {last}" if last else "No checkpoint was written."


class FinalEvalHook(hooks.EvalHook):
    """Evaluates every `eval_period` iterations and after the last one, but only when every step
    finished: Detectron2 sets `trainer.iter = max_iter` after the loop, and leaves it at the
    failed step otherwise."""

    def after_train(self):
        if self.trainer.iter < self.trainer.max_iter:
            self._eval_after_train = False
        super().after_train()


def run_training(trainer, start_iter: int, max_iter: int, checkpointer) -> None:
    """`trainer.train`, with Detectron2's non-finite-loss `FloatingPointError` turned into a
    `NonFiniteError` that names the iteration and the last finite checkpoint. The message is also
    logged, so the run's log.txt says why it stopped (Detectron2 logged only its own wording)."""
    try:
        trainer.train(start_iter, max_iter)
    except FloatingPointError as exc:
        error = NonFiniteError(
            f"training stopped at iteration {trainer.iter}: the loss is not finite ({exc}). "
            f"{last_checkpoint_note(checkpointer)}"
        )
        logging.getLogger(__name__).error(str(error))
        raise error from exc


class TrainingState:
    """A checkpointable: the training sampler's seed, and the states of Python's, NumPy's and
    torch's generators (CUDA's too, when used), as the main process has them when it saves.
    Loading restores them on the main process; other processes keep their own seeding, so a
    multi-process resume is exact for the data order but not for per-process random draws."""

    def __init__(self, sampler_seed: int | None = None):
        self.sampler_seed = sampler_seed

    def state_dict(self) -> dict:
        """`random_state.capture()` in tensors and plain values (what `weights_only` loading reads)."""
        (version, mt, gauss_next), (_, keys, pos, has_gauss, cached), torch_cpu, cuda = random_state.capture()
        state = {
            "sampler_seed": self.sampler_seed,
            "torch": torch_cpu,
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                      "cached_gaussian": cached},
            "python": {"version": version, "state": torch.tensor(mt, dtype=torch.int64),
                       "gauss_next": gauss_next},
        }
        if cuda is not None:
            state["cuda"] = cuda
        return state

    def load_state_dict(self, state: dict) -> None:
        self.sampler_seed = state["sampler_seed"]
        if not comm.is_main_process():
            return
        n, p = state["numpy"], state["python"]
        random_state.restore((
            (p["version"], tuple(p["state"].tolist()), p["gauss_next"]),
            ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]),
            state["torch"],
            state.get("cuda"),
        ))

__all__ = ["FinalEvalHook", "NonFiniteGuard", "TrainingState", "run_training"]
