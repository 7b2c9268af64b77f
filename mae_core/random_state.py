"""The process's random generators (Python's, numpy's, torch's, CUDA's) captured and put back.

Evaluating in the middle of training draws from torch's generator (every DataLoader iterator takes
a seed from it), and the training after it samples with that generator (Mask R-CNN's ROI heads,
dropout, drop path). Without putting the state back, a run's final number would depend on how
often it evaluates; detection's evaluation hook and segmentation's validation hook use this, and
detection's checkpointed TrainingState saves what `capture` returns."""

from __future__ import annotations

import random

import numpy as np
import torch

RandomState = tuple


def capture() -> RandomState:
    """Python's, numpy's and torch's CPU generator states, and CUDA's (None until CUDA is in use)."""
    cuda_in_use = torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda = torch.cuda.get_rng_state_all() if cuda_in_use else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def restore(state: RandomState) -> None:
    python, numpy, torch_cpu, cuda = state
    random.setstate(python)
    np.random.set_state(numpy)
    torch.set_rng_state(torch_cpu)
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def keeping_random_state(fn, *args):
    """`fn(*args)`, the random generators as they were before it afterwards."""
    state = capture()
    try:
        return fn(*args)
    finally:
        restore(state)
