"""What measures the toolkit against its peers and its own alternatives, apart from what users run
(mae_app): the MAE step against Hugging Face (pretrain.py), the backbones against Detectron2's and
MMSegmentation's (backbone.py), the demo's data paths (demo_epoch.py), the masking strategies'
speed (masking.py), and what they share (common.py: options, tolerances, timing, FLOPs, report).
Each has a command line in tools/bench_*.py."""
