#!/usr/bin/env python
"""MAE pretraining from a config file, with `key=value` overrides (dotted for sections):

    python tools/pretrain.py --config configs/pretrain/fashion_mnist_toy.py epochs=2 optim.blr=1e-3
    torchrun --nproc_per_node=8 tools/pretrain.py --config configs/pretrain/mae_vit_large.py \\
        data.root=/data/imagenet/train
    python tools/pretrain.py --config ... --resume          # continue from <output_dir>/last.pth
                                                            # (or start fresh when there is none)
    python tools/pretrain.py --config ... --overwrite       # replace the run in output_dir

A run holds its output folder while it runs (`run.lock`: process, host, start, command); a second
run into it is refused, and so is a fresh run into a folder holding another run's checkpoints.
`--overwrite` deletes that run's checkpoints and logs first; a claim left by a killed run is taken
over with `--resume`.

SIGTERM or SIGUSR1 (a scheduler's preemption notice) ends the run after its current step with
last.pth written at that step and exit status 143; `--resume` continues on the same curve.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from mae_core.config import load_pretrain_config, override, parse_overrides
from mae_core.engine import LAST_CHECKPOINT, pretrain
from mae_core.errors import exit_on_user_error
from mae_core.preemption import PREEMPTED_EXIT, ignore_preemption_signals


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="a file assigning `config = PretrainConfig(...)`")
    parser.add_argument("--output-dir", help="where checkpoints and logs go (overrides output_dir)")
    parser.add_argument("--resume", nargs="?", const=LAST_CHECKPOINT, metavar="CHECKPOINT",
                        help=f"continue a run; without a path, from <output_dir>/{LAST_CHECKPOINT} when it "
                             "exists (a fresh run otherwise)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run in the output folder: its checkpoints and logs are deleted "
                             "(a used folder is refused otherwise)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="changes, e.g. optim.blr=1e-3")
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv[:-1]):  # `--resume key=value`: the path was left out, keep the override
        if arg == "--resume" and "=" in argv[i + 1] and not argv[i + 1].startswith("-"):
            argv[i] = f"--resume={LAST_CHECKPOINT}"
    return parser.parse_intermixed_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with exit_on_user_error("pretrain.py"):
        changes = parse_overrides(args.overrides)
        if args.output_dir:
            changes["output_dir"] = args.output_dir
        config = override(load_pretrain_config(args.config), changes)
        result = pretrain(config, resume=args.resume, overwrite=args.overwrite)
    if result.preempted_by:
        ignore_preemption_signals()  # its checkpoint is written: a launcher's teardown may not cut the exit
        if main_process:
            print(f"pretrain.py: preempted by {result.preempted_by} after iteration {result.iteration}; "
                  f"{config.output_dir}/{LAST_CHECKPOINT} holds that iteration: continue with --resume "
                  f"(exit status {PREEMPTED_EXIT})", file=sys.stderr)
        return PREEMPTED_EXIT
    if main_process:
        logging.getLogger("pretrain").info("finished epoch %d (%d steps); checkpoints in %s",
                                           result.epoch, result.iteration, config.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
