"""Detectron2 glue for the toolkit: the `mae_core` ViT backbone + simple feature pyramid as a
Detectron2 `Backbone` (backbone.py), COCO-format data with checks and ViTDet's large-scale
jitter (data.py), layer-decay optimizer groups and the step schedule (optim.py), and the training
and evaluation pieces `tools/train_det.py` uses (engine.py). Model code stays in `mae_core`."""
