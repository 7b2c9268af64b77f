#!/usr/bin/env python
"""MAE reconstruction pictures: one PNG per image with four panels — original, masked input,
reconstruction, reconstruction with the visible patches pasted back.

    python tools/visualize_mae.py output/pretrain/fashion_mnist_toy/last.pth --num-images 8
    python tools/visualize_mae.py mae_visualize_vit_large.pth --allow-pickle --arch vit_large_patch16 \\
        --images photo.jpg --output-dir pictures

Images come from `--images` (files or folders) or, by default, from the data set the checkpoint
was trained on. A checkpoint without the toolkit's "arch" record (an official MAE release) needs
`--arch`; one without decoder weights cannot reconstruct and is refused."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mae_core.checkpoint import (  # noqa: E402
    CheckpointError,
    load_pretrained,
    read_checkpoint,
    to_official_layout,
)
from mae_core.config import DataConfig, PretrainConfig, from_dict  # noqa: E402
from mae_core.data import (  # noqa: E402
    IMAGE_EXTENSIONS,
    DatasetNotFoundError,
    ImageReadError,
    build_dataset,
    eval_transform,
    read_image,
)
from mae_core.engine import mae_from_arch  # noqa: E402
from mae_core.mae import MaskedAutoencoder, create_mae, patchify  # noqa: E402

PANEL_TITLES = ("original", "masked", "reconstruction", "reconstruction + visible")
DECODER_KEYS = ("decoder_embed.weight", "decoder_pred.weight", "mask_token")


def load_mae(path: str | Path, arch: str | None = None, allow_pickle: bool = False,
             norm_pix_loss: bool | None = None) -> tuple[MaskedAutoencoder, dict]:
    """The masked autoencoder stored in `path` and the checkpoint itself (for its config)."""
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
        model = mae_from_arch(record)
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


@torch.no_grad()
def reconstruct(model: MaskedAutoencoder, imgs: torch.Tensor, noise: torch.Tensor | None = None) -> dict:
    """Normalised-space images (B, C, H, W) for the four panels. Predictions of a norm_pix_loss
    model live in per-patch normalised space; each patch is mapped back with the mean and
    variance of the true patch (the picture shows shape, not the brightness the model never saw
    for masked patches)."""
    out = model(imgs, noise=noise)
    pred = out.pred.float()
    if model.norm_pix_loss:
        target = patchify(imgs, model.patch_size)
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1.0e-6) ** 0.5 + mean
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


def image_paths(items: list[str]) -> list[Path]:
    paths = []
    for item in map(Path, items):
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif item.is_file():
            paths.append(item)
        else:
            raise DatasetNotFoundError(f"image {item} does not exist")
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--images", nargs="+", help="image files or folders (default: the training data)")
    parser.add_argument("--num-images", type=int, default=4, help="how many images from the training data")
    parser.add_argument("--output-dir", default="output/mae_pictures")
    parser.add_argument("--mask-ratio", type=float, help="default: the model's")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random masks")
    parser.add_argument("--arch", help="MAE size for checkpoints without an arch record (vit_large_patch16)")
    parser.add_argument("--norm-pix-loss", action=argparse.BooleanOptionalAction, default=None,
                        help="with --arch: whether the checkpoint was trained with norm_pix_loss")
    parser.add_argument("--allow-pickle", action="store_true", help="trust a pickled (official) file")
    args = parser.parse_args(argv)

    try:
        model, ckpt = load_mae(args.checkpoint, args.arch, args.allow_pickle, args.norm_pix_loss)
        if args.mask_ratio is not None:
            model.check_mask_ratio(args.mask_ratio)  # before reading any image
            model.mask_ratio = args.mask_ratio
        saved = ckpt.get("config") if isinstance(ckpt, dict) else None
        data_cfg = from_dict(PretrainConfig, saved).data if saved else DataConfig()
        transform = eval_transform(data_cfg, model.img_size, model.in_chans)
        if args.images:
            paths = image_paths(args.images)
            imgs = torch.stack([transform(read_image(p, model.in_chans)) for p in paths])
            names = [p.stem for p in paths]
        else:
            dataset = build_dataset(data_cfg, transform, model.in_chans)
            count = min(args.num_images, len(dataset))
            imgs = torch.stack([dataset[i][0] for i in range(count)])
            names = [f"sample{i:04d}" for i in range(count)]
    except (CheckpointError, DatasetNotFoundError, ImageReadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    torch.manual_seed(args.seed)  # the model's own masking strategy draws the masks
    panels = reconstruct(model, imgs)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        path = out_dir / f"{name}_mae.png"
        grid_picture(panels, i, data_cfg.mean, data_cfg.std).save(path)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
