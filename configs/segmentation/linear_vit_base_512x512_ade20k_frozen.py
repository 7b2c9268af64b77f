# DINOv2's linear evaluation on ADE20K for an MAE ViT-B: the ViT fixed (model.backbone.freeze: no
# gradients, eval mode so drop path is off, not in the optimizer), a BatchNorm and a 1x1 classifier
# on its last token map (768 channels, stride 16) trained, logits upsampled bilinearly. Data,
# schedule and optimizer are the UperNet recipe's (layer decay touches only what trains: the head).
_base_ = ["./upernet_vit_base_512x512_160k_ade20k.py"]

model = dict(
    backbone=dict(freeze=True, out_indices=(11,), drop_path_rate=0.0),
    neck=None,
    decode_head=dict(
        _delete_=True,
        type="LinearHead",
        in_channels=768,
        num_classes=150,
        dropout_ratio=0.0,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    auxiliary_head=None,
)
