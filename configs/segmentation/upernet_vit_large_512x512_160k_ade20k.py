# MAE ViT-L + UperNet on ADE20K (the config MMSegmentation never shipped): features after blocks
# 7, 11, 15, 23; layer decay 0.75 and drop path 0.2 as in MAE's ViT-L fine-tuning recipe.
_base_ = ["./_base_upernet_vit.py"]

embed_dim = 1024
model = dict(
    backbone=dict(
        arch="vit_large_patch16",
        out_indices=(7, 11, 15, 23),
        drop_path_rate=0.2,
        use_rel_pos=True,
        init_values=1.0,
    ),
    neck=dict(embed_dim=embed_dim),
    decode_head=dict(in_channels=[embed_dim] * 4, channels=embed_dim),
    auxiliary_head=dict(in_channels=embed_dim),
)
optim_wrapper = dict(paramwise_cfg=dict(layer_decay_rate=0.75))
