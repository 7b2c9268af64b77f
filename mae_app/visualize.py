"""MAE reconstruction pictures (`tools/visualize_mae.py`): the masked autoencoder a checkpoint
holds, its four panels per image (original, masked input, reconstruction, reconstruction with the
visible patches pasted back) and the PNGs that show them side by side. The demo's masking sweep
draws each strategy's masks through the same tool."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw

from mae_core.checkpoint import CheckpointError, load_pretrained, read_checkpoint, to_official_layout
from mae_core.config import DataConfig, PretrainConfig, from_dict
from mae_core.data import build_dataset, eval_transform, list_images_recursively, read_image
from mae_core.engine import mae_from_record
from mae_core.mae import MaskedAutoencoder, create_mae, patch_statistics, patchify

PANEL_TITLES = ("original", "masked", "reconstruction", "reconstruction + visible")
DECODER_KEYS = ("decoder_embed.weight", "decoder_pred.weight", "mask_token")


def load_mae(path: str | Path, arch: str | None = None, allow_pickle: bool = False,
             norm_pix_loss: bool | None = None) -> tuple[MaskedAutoencoder, dict]:
    """The masked autoencoder stored in `path` and the checkpoint itself (for its config). `arch`
    (a size preset) is needed only for a file without the toolkit's architecture record."""
    ckpt = read_checkpoint(path, allow_pickle)
    weights = to_official_layout(ckpt, str(path)).state_dict
    lacking = [k for k in DECODER_KEYS if k not in weights]
    if lacking:
        raise CheckpointError(
            f"{path} has no decoder weights ({', '.join(lacking)} missing): reconstructions need a "
            "checkpoint saved with its decoder (pretraining checkpoints, or the official *_visualize / "
            "*_full releases), not an encoder-only export"
        )
    record = ckpt.get("arch") if isinstance(ckpt, dict) else None
    if record is not None and {"decoder_embed_dim", "decoder_depth"} <= set(record):
        model = mae_from_record(record)
    elif arch is not None:
        model = create_mae(arch, **({} if norm_pix_loss is None else {"norm_pix_loss": norm_pix_loss}))
    else:
        raise CheckpointError(f"{path} does not record its MAE architecture; name it with --arch")
    try:
        load_pretrained(model, ckpt)  # completely or not at all
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    saved = ckpt.get("config") if isinstance(ckpt, dict) else None
    if saved and "epoch" in ckpt:  # informed masks as at that point of training (hard_patches' ramp)
        model.set_progress(min(1.0, (ckpt["epoch"] + 1) / saved["epochs"]))
    return model.eval(), ckpt


def training_data_config(ckpt) -> DataConfig:
    """The data settings (normalisation, data set) the checkpoint was trained with; defaults for
    a file without the toolkit's config."""
    saved = ckpt.get("config") if isinstance(ckpt, dict) else None
    return from_dict(PretrainConfig, saved).data if saved else DataConfig()


def load_images(model: MaskedAutoencoder, data_cfg: DataConfig, images: list[str] | None,
                num_images: int) -> tuple[torch.Tensor, list[str]]:
    """The batch to draw and a name per image: the files and folders `images` (recursively), or
    the first `num_images` samples of the training data."""
    transform = eval_transform(data_cfg, model.img_size, model.in_chans)
    if images:
        paths = list_images_recursively(images)
        return torch.stack([transform(read_image(p, model.in_chans)) for p in paths]), [p.stem for p in paths]
    dataset = build_dataset(data_cfg, transform, model.in_chans)
    count = min(num_images, len(dataset))
    return torch.stack([dataset[i][0] for i in range(count)]), [f"sample{i:04d}" for i in range(count)]


@torch.no_grad()
def reconstruct(model: MaskedAutoencoder, imgs: torch.Tensor, noise: torch.Tensor | None = None) -> dict:
    """Normalised-space images (B, C, H, W) for the four panels. Predictions of a norm_pix_loss
    model live in per-patch normalised space; each patch is mapped back with the statistics of the
    true patch (`patch_statistics`, as the loss target used them): the picture shows shape, not the
    brightness the model never saw for masked patches."""
    out = model(imgs, noise=noise)
    pred = out.pred.float()
    if model.norm_pix_loss:
        mean, std = patch_statistics(patchify(imgs, model.patch_size))
        pred = pred * std + mean
    mask = out.mask.unsqueeze(-1).expand(-1, -1, model.patch_size**2 * model.in_chans)
    mask = model.unpatchify(mask)  # 1 = masked, in image layout
    recon = model.unpatchify(pred)
    return {
        "original": imgs,
        "masked": imgs * (1 - mask),
        "reconstruction": recon,
        "reconstruction + visible": imgs * (1 - mask) + recon * mask,
        "mask": mask,
    }


def to_pil(img: torch.Tensor, mean, std, mask: torch.Tensor | None = None, scale: int = 1) -> Image.Image:
    """Un-normalises one (C, H, W) image; masked pixels (mask == 1) are drawn mid-grey."""
    mean = torch.tensor(mean).view(-1, 1, 1)
    std = torch.tensor(std).view(-1, 1, 1)
    pixels = (img.float() * std + mean).clamp(0, 1)
    if mask is not None:
        pixels = torch.where(mask.bool(), torch.full_like(pixels, 0.5), pixels)
    array = (pixels * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    return picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)


def grid_picture(panels: dict, index: int, mean, std) -> Image.Image:
    """The four panels of sample `index` side by side under their titles; small images are
    enlarged (nearest neighbour) so that patches stay visible."""
    height, width = panels["original"].shape[-2:]
    scale = max(1, 128 // min(height, width))
    images = [
        to_pil(panels[title][index], mean, std, panels["mask"][index] if title == "masked" else None, scale)
        for title in PANEL_TITLES
    ]
    gap, header = 4, 14
    size = (len(images) * (images[0].width + gap) + gap, images[0].height + header + gap)
    canvas = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(canvas)
    for i, (title, picture) in enumerate(zip(PANEL_TITLES, images, strict=True)):
        left = gap + i * (picture.width + gap)
        draw.text((left, 1), title, fill="black")
        canvas.paste(picture.convert("RGB"), (left, header))
    return canvas


def save_pictures(panels: dict, names: list[str], out_dir: str | Path, data_cfg: DataConfig) -> list[Path]:
    """One `<name>_mae.png` per image in `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        paths.append(out_dir / f"{name}_mae.png")
        grid_picture(panels, i, data_cfg.mean, data_cfg.std).save(paths[-1])
    return paths


__all__ = ["grid_picture", "load_images", "load_mae", "reconstruct", "save_pictures", "to_pil",
           "training_data_config"]
