#!/usr/bin/env python
"""Builds the demo's datasets (pretraining images, classification folders, COCO instances and
ADE20K-layout semantic maps) from Fashion-MNIST items pasted on scikit-image photos.

    python tools/make_demo_data.py --out data/demo --seed 0
    python tools/make_demo_data.py --out /tmp/tiny --train-scenes 20 --val-scenes 10 --pretrain-images 50

The same seed and sizes give byte-identical files (see mae_app/demo_data.py)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from tqdm import tqdm

from mae_app.demo_data import DemoDataSpec, build_demo_data
from mae_core.data import DatasetNotFoundError


def parse_args(argv=None) -> tuple[Path, DemoDataSpec]:
    defaults = DemoDataSpec()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    for f in dataclasses.fields(DemoDataSpec):
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, tuple):
            parser.add_argument(flag, type=int, nargs=2, default=value, metavar=("MIN", "MAX"))
        else:
            parser.add_argument(flag, type=type(value), default=value)
    args = parser.parse_args(argv)
    spec = DemoDataSpec(**{f.name: tuple(v) if isinstance(v := getattr(args, f.name), list) else v
                           for f in dataclasses.fields(DemoDataSpec)})
    return args.out, spec


def main(argv=None) -> int:
    try:
        out, spec = parse_args(argv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    progress = lambda label, it, total: tqdm(it, total=total, desc=label, unit="img", leave=False)
    try:
        root = build_demo_data(out, spec, progress)
    except DatasetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"demo data written to {root} (seed {spec.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
