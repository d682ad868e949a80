"""An Implicit Concept Dataset as training examples: captions per mode, cached VAE latents, region masks.

Images are resized to the recipe's square resolution (no crop, no flip: a flip would move the boxes that the
caption's location tokens describe) and encoded by the VAE once. The cache keeps each image's latent mean and
standard deviation, so every step still draws a fresh latent sample, as encoding every step would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, load_from_disk
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from datasets_icd.geometry import box_cells, geom_caption, location_vocabulary
from erasure.config import ConfigError
from erasure.recipe import Recipe

ENCODE_BATCH = 8


def load_icd(recipe: Recipe) -> Dataset:
    """Open ``data.dataset`` and check it can train ``recipe``, before any model is loaded."""
    path = Path(recipe.data.dataset)
    if not (path / "dataset_info.json").is_file():
        raise ConfigError(
            f"data.dataset = '{path}': not a dataset saved with save_to_disk; build one with `icd build`"
        )
    dataset = load_from_disk(str(path))
    if recipe.data.max_images is not None:
        dataset = dataset.select(range(min(recipe.data.max_images, len(dataset))))
    found = {c["name"] for row in dataset["concepts"] for c in row}
    missing = [name for name in recipe.data.concepts if name not in found]
    if recipe.train.mode != "naive" and missing:
        raise ConfigError(
            f"data.concepts: {missing} have no boxes in {path} (concepts with boxes: {sorted(found) or 'none'}); "
            f"train.mode={recipe.train.mode} needs the concept's boxes for its location tokens: annotate the "
            "dataset with a detector (`icd build`) or use train.mode=naive"
        )
    return dataset


def concept_boxes(concepts: list[dict], names: list[str]) -> list[dict]:
    return [c for c in concepts if c["name"] in names]


def training_captions(dataset: Dataset, recipe: Recipe) -> list[str]:
    """Plain captions for ``naive``; otherwise the caption with existence phrase and location tokens.

    The geometry caption is rebuilt here for the recipe's concepts and grid, so the tokens always match the
    vocabulary added to the tokenizer.
    """
    if recipe.train.mode == "naive":
        return list(dataset["caption"])
    return _geom_captions(dataset, recipe, list(dataset["caption"]))


def dropped_captions(dataset: Dataset, recipe: Recipe) -> list[str]:
    """What each caption becomes when caption dropout drops it: the scene description goes, the concept stays.

    Naive captions never name the concept, so theirs become empty; Geom-Erasing ones keep their existence phrase
    and location tokens ("watermark <loc_3_3>"), so no dropped caption shows the concept without its tokens.
    On the toy world this did not save the disentanglement: a 750-step Geom-Erasing run with 10% dropout drew the
    watermark for plain prompts in 50.0% of images (40.6% with empty dropped captions, 4.2% without dropout;
    benchmarks/RESULTS.md), so dropout stays off by default.
    """
    if recipe.train.mode == "naive":
        return [""] * len(dataset)
    return _geom_captions(dataset, recipe, [""] * len(dataset), caption_template="{concepts}")


def _geom_captions(dataset: Dataset, recipe: Recipe, captions: list[str], **template) -> list[str]:
    rows = zip(captions, dataset["concepts"], dataset["width"], dataset["height"], strict=True)
    return [
        geom_caption(
            caption, concept_boxes(concepts, recipe.data.concepts), width, height, recipe.data.grid, **template
        )
        for caption, concepts, width, height in rows
    ]


def location_tokens(recipe: Recipe) -> list[str]:
    """The tokens this recipe adds to the tokenizer(s): none for ``naive``."""
    return [] if recipe.train.mode == "naive" else location_vocabulary(recipe.data.grid)


def region_mask(concepts: list[dict], width: int, height: int, latent_size: int) -> torch.Tensor:
    """``(1, latent_size, latent_size)``: 1 at every latent position a box reaches into, 0 elsewhere.

    A latent position is one cell of a ``latent_size`` grid over the image, so :func:`box_cells` maps boxes
    to latent resolution with the same edge rule as the location tokens.
    """
    mask = torch.zeros(1, latent_size, latent_size)
    for concept in concepts:
        for row, col in box_cells(tuple(concept["box"]), width, height, latent_size):
            mask[0, row, col] = 1
    return mask


def pixel_tensor(image: Image.Image, resolution: int) -> torch.Tensor:
    """``(3, H, W)`` in [-1, 1], resized to a square (the boxes scale with it)."""
    image = image.convert("RGB").resize((resolution, resolution), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


@torch.no_grad()
def _encode(vae, images: list[Image.Image], resolution: int) -> torch.Tensor:
    pixels = torch.stack([pixel_tensor(image, resolution) for image in images]).to(vae.device, vae.dtype)
    dist = vae.encode(pixels).latent_dist
    return torch.cat([dist.mean, dist.std], dim=1).to(torch.float16).cpu()


def cache_latents(
    dataset: Dataset, vae, resolution: int, cache_dir: Path | None, process_index: int = 0, num_processes: int = 1
) -> list[torch.Tensor] | list[Path]:
    """Latent mean and std (stacked on channels) of every image: tensors in memory, or one file per image.

    On disk, each process encodes its share (every ``num_processes``-th image) and skips files already written,
    so an interrupted run does not encode again; the caller waits for all processes before reading.
    """
    if cache_dir is None:
        indices = list(range(len(dataset)))
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        paths = [cache_dir / f"{i:08d}.safetensors" for i in range(len(dataset))]
        indices = [i for i in range(process_index, len(dataset), num_processes) if not paths[i].is_file()]
    cached: list[torch.Tensor] = []
    for start in tqdm(range(0, len(indices), ENCODE_BATCH), desc="caching latents", disable=process_index != 0):
        chunk = indices[start : start + ENCODE_BATCH]
        encoded = _encode(vae, dataset.select(chunk)["image"], resolution)
        if cache_dir is None:
            cached.extend(encoded)
        else:
            for i, latent in zip(chunk, encoded, strict=True):
                save_file({"latent_dist": latent.contiguous()}, paths[i])
    return cached if cache_dir is None else paths


class TrainingExamples(torch.utils.data.Dataset):
    """Per image: cached latent distribution, token ids per tokenizer (as captioned and as dropped), region mask."""

    def __init__(
        self,
        latents: list,
        input_ids: list[torch.Tensor],
        dropped_ids: list[torch.Tensor],
        masks: list[torch.Tensor],
    ):
        self.latents, self.input_ids, self.dropped_ids, self.masks = latents, input_ids, dropped_ids, masks

    def __len__(self) -> int:
        return len(self.masks)

    def __getitem__(self, i: int) -> dict:
        latent = self.latents[i]
        if isinstance(latent, Path):
            latent = load_file(latent)["latent_dist"]
        return {
            "latent_dist": latent,
            "input_ids": [ids[i] for ids in self.input_ids],
            "dropped_ids": [ids[i] for ids in self.dropped_ids],
            "mask": self.masks[i],
        }


def collate(items: list[dict]) -> dict:
    return {
        "latent_dist": torch.stack([it["latent_dist"] for it in items]).float(),
        "input_ids": [torch.stack(ids) for ids in zip(*(it["input_ids"] for it in items), strict=True)],
        "dropped_ids": [torch.stack(ids) for ids in zip(*(it["dropped_ids"] for it in items), strict=True)],
        "mask": torch.stack([it["mask"] for it in items]),
    }


def drop_captions(
    input_ids: list[torch.Tensor], dropped_ids: list[torch.Tensor], rate: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """Replace each caption of the batch, with probability ``rate``, by its dropped form (:func:`dropped_captions`)
    in every tokenizer.

    Without it, a fine-tune never trains the empty prompt that classifier-free guidance subtracts; with 10% the
    naive toy watermark run showed its watermark in 34.4% of guided images instead of 18.8% (750 steps).
    """
    drop = torch.rand(len(input_ids[0]), generator=generator, device=generator.device) < rate
    drop = drop.to(input_ids[0].device)[:, None]
    return [torch.where(drop, gone, ids) for ids, gone in zip(input_ids, dropped_ids, strict=True)]


def sample_latents(latent_dist: torch.Tensor, vae_config, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw a latent from cached (mean, std) and scale it as the UNet expects."""
    mean, std = latent_dist.chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    latents = mean + std * noise
    shift = getattr(vae_config, "shift_factor", None) or 0.0
    return (latents - shift) * vae_config.scaling_factor
