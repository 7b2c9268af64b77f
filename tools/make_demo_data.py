#!/usr/bin/env python
"""Builds the demo's datasets (pretraining images, classification folders, COCO instances and
ADE20K-layout semantic maps) from Fashion-MNIST items pasted on scikit-image photos.

    python tools/make_demo_data.py --output-dir data/demo --seed 0
    python tools/make_demo_data.py --output-dir /tmp/tiny --train-scenes 20 --val-scenes 10 \\
        --pretrain-images 50

The same seed and sizes give byte-identical files (see mae_app/demo_data.py)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from tqdm import tqdm

from mae_app.demo_data import DemoDataSpec, build_demo_data
from mae_core.errors import exit_on_user_error


def parse_args(argv=None) -> tuple[Path, DemoDataSpec]:
    defaults = DemoDataSpec()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, required=True, help="output folder (created)")
    for f in dataclasses.fields(DemoDataSpec):
        value = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, tuple):
            parser.add_argument(flag, type=int, nargs=2, default=value, metavar=("MIN", "MAX"))
        else:
            parser.add_argument(flag, type=type(value), default=value)
    args = parser.parse_args(argv)
    try:
        spec = DemoDataSpec(**{f.name: tuple(v) if isinstance(v := getattr(args, f.name), list) else v
                               for f in dataclasses.fields(DemoDataSpec)})
    except ValueError as exc:  # sizes that cannot make the data
        parser.error(str(exc))
    return args.output_dir, spec


def main(argv=None) -> int:
    out, spec = parse_args(argv)
    progress = lambda label, it, total: tqdm(it, total=total, desc=label, unit="img", leave=False)
    with exit_on_user_error("make_demo_data.py"):
        root = build_demo_data(out, spec, progress)
    print(f"demo data written to {root} (seed {spec.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
