"""Evaluate a segmentor checkpoint with the config's test set and metric (MMSegmentation's
tools/test.py flags). Prints the metrics as one JSON line.

    python tools/test_seg.py CONFIG work_dirs/tiny/iter_60.pth --out preds/ --show-dir vis/
"""

from __future__ import annotations

import argparse
import json

from mmengine.runner import Runner

from segmentation.runtime import (
    exit_on_error,
    init_cpu_distributed,
    load_mmseg_config,
    parse_with_launcher_args,
)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file (loaded with torch.load(weights_only=True))")
    parser.add_argument("--work-dir", help="where the logs and the metrics go")
    parser.add_argument("--out", help="folder for the predicted label maps, one PNG per image")
    parser.add_argument("--show-dir", help="folder for images painted with their predictions")
    return parse_with_launcher_args(parser, argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    with exit_on_error("test_seg"):
        return evaluate(args)


def evaluate(args: argparse.Namespace) -> dict:
    """The checkpoint is read by mmengine through `load_from_local_file` (segmentation.runtime): a
    missing or damaged file stops with an error naming it."""
    cfg = load_mmseg_config(args.config, args.launcher, args.work_dir, args.cfg_options)
    init_cpu_distributed(args.launcher)
    cfg.load_from = args.checkpoint
    if args.show_dir:
        # Every image, not mmseg's default of one in 50.
        cfg.default_hooks.visualization.update(draw=True, interval=1)
        cfg.visualizer.save_dir = args.show_dir
        # The hook stamps images with runner.iter, which builds the train loop and its dataset:
        # point that at the test data, so testing never needs the training images.
        cfg.train_dataloader = cfg.test_dataloader
    if args.out:
        cfg.test_evaluator.output_dir = args.out
    metrics = Runner.from_cfg(cfg).test()
    print(json.dumps({"metrics": {name: float(value) for name, value in metrics.items()}}))
    return metrics


if __name__ == "__main__":
    main()
