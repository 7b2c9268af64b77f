# The ViT-B recipe in MMSegmentation's `MAE` layout: the cls token stays in attention and every block
# has BEiT's relative-position table (zero-initialised) instead of decomposed relative positions, so
# MMSegmentation MAE checkpoints load (`model.pretrained=...`) and give MMSegmentation's outputs.
_base_ = ["./upernet_vit_base_512x512_160k_ade20k.py"]

model = dict(backbone=dict(use_rel_pos=False, cls_token_in_attention=True, rel_pos_bias=True))
