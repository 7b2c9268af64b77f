# The demo's frozen-backbone segmentation (mae_app.demo --frozen): DINOv2's linear evaluation on the
# demo's toy ViT. The ViT is fixed (model.backbone.freeze: no gradients, eval mode, not in the
# optimizer); a BatchNorm and a 1x1 classifier on its last token map (96 channels, stride 4) train,
# their logits upsampled bilinearly. Everything else (data, schedule, class weights) is the demo's
# UperNet config; what varies per run comes as --cfg-options as there.
_base_ = ["./demo_upernet_vit_toy.py"]

model = dict(
    backbone=dict(freeze=True, features="trunk"),
    decode_head=dict(
        _delete_=True,
        type="LinearHead",
        in_channels=96,  # vit_toy_patch4's width
        num_classes={{_base_.model.decode_head.num_classes}},
        dropout_ratio=0.0,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0,
                         class_weight={{_base_.class_weight}}),
    ),
    auxiliary_head=None,
)
