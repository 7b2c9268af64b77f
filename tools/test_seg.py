"""Evaluate a segmentor checkpoint with the config's test set and metric (MMSegmentation's
tools/test.py flags). Prints the metrics as one JSON line. The run is segmentation.train.evaluate.

    python tools/test_seg.py CONFIG work_dirs/tiny/iter_60.pth --work-dir work_dirs/tiny_test \
        --output-dir preds/ --show-dir vis/

The work dir (default work_dirs/<config name>_test) is the test's own, as a training run's is:
held while it runs, refused when it holds another run unless --overwrite, and never the
checkpoint's folder. It gets the logs and metrics and the run's record (run.json: the training
run's record beside the checkpoint, with the data evaluated), which tools/compare.py reads.
"""

from __future__ import annotations

import argparse
import sys

from segmentation.train import add_run_flags, evaluate, exit_on_error, parse_with_launcher_args


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", help="config file")
    parser.add_argument("checkpoint", help="checkpoint file (loaded with torch.load(weights_only=True))")
    parser.add_argument("--work-dir", help="where the logs, the metrics and run.json go "
                                           "(default: work_dirs/<config name>_test)")
    parser.add_argument("--output-dir", help="folder for the predicted label maps, one PNG per image")
    parser.add_argument("--show-dir", help="folder for images painted with their predictions")
    add_run_flags(parser)
    args = parse_with_launcher_args(parser, argv)
    with exit_on_error("test_seg.py"):
        evaluate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
