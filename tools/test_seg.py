"""Evaluate a segmentor checkpoint with the config's test set and metric (MMSegmentation's
tools/test.py flags). Prints the metrics as one JSON line. The run is segmentation.train.evaluate.

    python tools/test_seg.py CONFIG work_dirs/tiny/iter_60.pth --out preds/ --show-dir vis/
"""

from __future__ import annotations

import argparse
import sys

from segmentation.train import evaluate, exit_on_error, parse_with_launcher_args


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file (loaded with torch.load(weights_only=True))")
    parser.add_argument("--work-dir", help="where the logs and the metrics go")
    parser.add_argument("--out", help="folder for the predicted label maps, one PNG per image")
    parser.add_argument("--show-dir", help="folder for images painted with their predictions")
    args = parse_with_launcher_args(parser, argv)
    with exit_on_error("test_seg"):
        evaluate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
