"""Detectron2 glue for the toolkit: the `mae_core` ViT backbone + simple feature pyramid as a
Detectron2 `Backbone` (backbone.py), catalogue backbones (catalogue.py), COCO-format data with
checks and ViTDet's large-scale jitter (data.py), layer-decay optimizer groups and the step schedule
(optim.py), the non-finite guard and training-state hooks (hooks.py), the checkpointer, MAE
initialisation, optimizer and evaluation (engine.py), `key=value` overrides that must name existing
keys (overrides.py), the training and evaluation runs of `tools/train_det.py` (train.py), and the
predictor and overlays of `tools/infer_det.py` (predict.py). Model code stays in `mae_core`."""
