"""The run record (`run.json`) that every tool which trains or evaluates leaves in its output folder,
so that tools/compare.py can read the folder as it is (mae_app/runs.py reads it):

    {"task": "det" | "seg" | "cls", "backbone": "vit_mae", "backbone_kwargs": {...},
     "checkpoint": "...",        # the initial checkpoint (None: random initialisation)
     "seed": 0, "img_size": 128, "batch_size": 2,
     "eval_data": "...",         # the data evaluated: a COCO json, an image folder
     "split": "val" | "<name>",  # val, or the name of another data set evaluated (kept apart)
     "weights": "...", "trained_in": "..."}   # of an evaluation of a trained model

A backbone that is not a catalogue entry (mae_core.catalogue) is named by its config type and size,
e.g. "MAEViT(vit_toy_patch4)", with `"config_backbone": true` and its parameter count. Callers may
add fields (the demo adds its pretraining's settings); an evaluation inherits every field of the
record of the training run whose weights it evaluates. Written by the main process at the end of a
successful run, so a folder with a record holds a finished run."""

from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import write_atomically

RUN_FILE = "run.json"


def protocol_fields(label_fraction=None, label_count=None, subset_seed=0, frozen=False) -> dict:
    """The transfer protocol where it is not the default (every label, the backbone fine-tuned):
    the labelled subset (mae_core.transfer.label_subset) and a frozen backbone, so that the report
    keeps such runs in rows and curves of their own."""
    subset = {"label_fraction": label_fraction, "label_count": label_count}
    fields = {key: value for key, value in subset.items() if value is not None}
    if fields:
        fields["subset_seed"] = subset_seed
    if frozen:
        fields["frozen"] = True
    return fields


def write_run_record(folder: str | Path, record: dict) -> Path:
    path = Path(folder) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2, sort_keys=True, default=str) + "\n"
    write_atomically(path, lambda f: f.write(text.encode()))
    return path


def read_run_record(folder: str | Path) -> dict | None:
    """The record in `folder`, or None when it has none (or an unreadable one)."""
    try:
        return json.loads((Path(folder) / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def data_name(eval_data: str) -> str:
    """A short name for an evaluated data set: a COCO json's stem without `instances_`
    (instances_heldout.json -> heldout), an image folder's name."""
    path = Path(str(eval_data).rstrip("/"))
    return path.stem.removeprefix("instances_") if path.suffix == ".json" else path.name


def evaluation_record(own: dict, weights: str | Path | None) -> dict:
    """The record of a run that evaluates `weights` on `own["eval_data"]`: the record of the
    training run beside the weights (its setting: backbone, checkpoint, seed, ...) with this run's
    fields; "split" is "val" when it evaluates the data that training run validated on (or when
    there is no training record to tell), else the evaluated data's name, kept apart from val."""
    trained = read_run_record(Path(weights).parent) if weights else None
    if trained is None:
        return {"split": "val", **own, "weights": str(weights) if weights else None}
    same = str(trained.get("eval_data")) == str(own.get("eval_data"))
    return {**own, **trained, "eval_data": own.get("eval_data"),
            "split": "val" if same else data_name(own["eval_data"]),
            "weights": str(weights), "trained_in": str(Path(weights).parent)}
