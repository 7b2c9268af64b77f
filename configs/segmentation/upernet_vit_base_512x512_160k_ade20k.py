# MAE ViT-B + UperNet on ADE20K, the MAE paper's segmentation recipe: 160k iterations at batch 16
# (8 GPUs x 2), AdamW lr 1e-4, weight decay 0.05, layer decay 0.65, 1500-iteration warmup then poly,
# relative position bias and layer scale as in BEiT's UperNet set-up the paper follows.
_base_ = ["./_base_upernet_vit.py"]

embed_dim = 768
model = dict(
    backbone=dict(
        arch="vit_base_patch16",
        out_indices=(3, 5, 7, 11),
        drop_path_rate=0.1,
        use_rel_pos=True,
        init_values=1.0,
    ),
    neck=dict(embed_dim=embed_dim),
    decode_head=dict(in_channels=[embed_dim] * 4, channels=embed_dim),
    auxiliary_head=dict(in_channels=embed_dim),
)
