"""The paper's pretraining recipe (He et al. 2021, appendix A.1) on an ImageNet-style image
folder; the mae_vit_* files pick the encoder size. 64 images per GPU; accumulation makes up
the effective batch of 4096 on fewer GPUs."""

from mae_core.config import DataConfig, ModelConfig, OptimConfig, PretrainConfig

config = PretrainConfig(
    model=ModelConfig(arch="vit_base_patch16", img_size=224, mask_ratio=0.75, norm_pix_loss=True),
    data=DataConfig(dataset="image_folder", root="datasets/imagenet/train", min_scale=0.2, hflip=True),
    optim=OptimConfig(blr=1.5e-4, weight_decay=0.05, betas=(0.9, 0.95), warmup_epochs=40),
    epochs=800,
    batch_size=64,
    effective_batch=4096,
    amp="bf16",
    output_dir="output/pretrain/mae_vit_base",
)
