"""Images as a latent diffusion model's VAE gives them back: a generator can draw no sharper than its decoder, so
a detector that only ever saw crisp concepts misses the blurred ones a fine-tuned model makes. Used to train
detectors on such views and to measure the ceiling they put on every ICR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def load_vae(model: str | Path, device: str = "cpu"):
    """The AutoencoderKL of a diffusers pipeline directory (its ``vae`` subfolder) or of a bare VAE directory."""
    from diffusers import AutoencoderKL

    model = Path(model)
    folder = model / "vae" if (model / "vae" / "config.json").is_file() else model
    if not (folder / "config.json").is_file():
        raise SystemExit(f"{model}: neither a diffusers pipeline with a vae/ folder nor a VAE directory")
    return AutoencoderKL.from_pretrained(folder).to(device).eval()


@torch.no_grad()
def reconstruct(vae, images: list[Image.Image], batch_size: int = 64) -> list[Image.Image]:
    """Encode and decode RGB images of one size with ``vae`` (latent means, no sampling noise)."""
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in chunk])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(vae.device, vae.dtype) / 127.5 - 1
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample
        pixels = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        out.extend(Image.fromarray(p) for p in pixels)
    return out
