"""An Implicit Concept Dataset as training examples: captions per mode, cached VAE latents, region masks.

Each image is resized so its short side is the recipe's resolution and cropped to a square (``data.crop``: the
center, or a place drawn once per image from the seed), as diffusers' training scripts do; its boxes move with it,
so location tokens and region masks describe the square the model sees, and SDXL's time ids carry the real
original size and crop corner. No flip: it would move the boxes that the caption's location tokens describe.
Images are encoded by the VAE once. The cache keeps each image's latent mean and standard deviation, so every step
still draws a fresh latent sample, as encoding every step would.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset, load_from_disk
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from datasets_icd.geometry import DEFAULT_CAPTION_TEMPLATE, box_cells, geom_caption, location_vocabulary
from erasure.config import ConfigError
from erasure.recipe import Recipe

ENCODE_BATCH = 8
BUILD_SUMMARY = "build.json"  # written by `icd build` next to the dataset: its config holds the concept phrases


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


def dataset_phrases(dataset_dir: str | Path) -> dict[str, str]:
    """The existence phrase of each concept that ``icd build --phrase`` wrote into the dataset (its name otherwise)."""
    summary = Path(dataset_dir) / BUILD_SUMMARY
    if not summary.is_file():
        return {}
    return json.loads(summary.read_text(encoding="utf-8")).get("config", {}).get("phrases", {})


@dataclass(frozen=True)
class Crop:
    """Where an image's training square lies: the image resized to ``size`` (short side = ``resolution``), then
    cut at ``(left, top)``."""

    width: int
    height: int
    size: tuple[int, int]
    left: int
    top: int
    resolution: int

    def box(self, box: list[float]) -> list[float] | None:
        """A pixel box of the original image in the square's pixels; None when the crop cut it away."""
        sx, sy = self.size[0] / self.width, self.size[1] / self.height
        x0, y0, x1, y1 = box
        r = self.resolution
        moved = [
            min(max(x0 * sx - self.left, 0.0), r),
            min(max(y0 * sy - self.top, 0.0), r),
            min(max(x1 * sx - self.left, 0.0), r),
            min(max(y1 * sy - self.top, 0.0), r),
        ]
        return moved if moved[0] < moved[2] and moved[1] < moved[3] else None

    def time_ids(self) -> list[int]:
        """SDXL's micro-conditioning: original size, crop top-left, target size (each as height, width)."""
        return [self.height, self.width, self.top, self.left, self.resolution, self.resolution]


def crop_window(width: int, height: int, resolution: int, mode: str = "center", seed: tuple[int, ...] = (0,)) -> Crop:
    """The training square of a ``width`` x ``height`` image; ``random`` draws its place from ``seed``."""
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    spare_x, spare_y = size[0] - resolution, size[1] - resolution
    if mode == "center":
        left, top = round(spare_x / 2), round(spare_y / 2)
    elif mode == "random":
        rng = np.random.default_rng(seed)
        left, top = int(rng.integers(0, spare_x + 1)), int(rng.integers(0, spare_y + 1))
    else:
        raise ValueError(f"Unknown crop mode {mode}: expected center or random")
    return Crop(width, height, size, left, top, resolution)


def crop_windows(dataset: Dataset, recipe: Recipe) -> list[Crop]:
    """Every image's training square; a random one is drawn once per image (from the seed and its row), so its
    cached latent, caption and mask agree."""
    sizes = zip(dataset["width"], dataset["height"], strict=True)
    data = recipe.data
    return [
        crop_window(w, h, data.resolution, data.crop, seed=(recipe.train.seed, i)) for i, (w, h) in enumerate(sizes)
    ]


def square_concepts(dataset: Dataset, recipe: Recipe, crops: list[Crop]) -> list[list[dict]]:
    """Per image, the recipe's concepts with their boxes in the training square's pixels (cut-away ones dropped)."""
    kept = []
    for concepts, crop in zip(dataset["concepts"], crops, strict=True):
        moved = [(c, crop.box(c["box"])) for c in concepts if c["name"] in recipe.data.concepts]
        kept.append([{**c, "box": box} for c, box in moved if box is not None])
    return kept


def training_captions(
    dataset: Dataset, recipe: Recipe, concepts: list[list[dict]], tokenizers: list
) -> tuple[list[str], int]:
    """Plain captions for ``naive``; otherwise the caption with existence phrase and location tokens; and how many
    scene captions were shortened so that every tokenizer keeps the whole concept phrase.

    The geometry caption is rebuilt here for the recipe's concepts, grid and crop, so the tokens always match the
    vocabulary added to the tokenizer and the square the model sees. A caption longer than the tokenizer's limit
    would lose its location tokens to truncation, so its scene part loses words from the end instead.
    """
    if recipe.train.mode == "naive":
        return list(dataset["caption"]), 0
    captions, shortened = [], 0
    for scene, tail in zip(dataset["caption"], dropped_captions(dataset, recipe, concepts), strict=True):
        caption, cut = fit_caption(scene, tail, tokenizers)
        captions.append(caption)
        shortened += cut
    return captions, shortened


def fit_caption(scene: str, concepts: str, tokenizers: list) -> tuple[str, bool]:
    """``"scene, concepts"`` with as many of the scene's leading words as every tokenizer can hold beside the whole
    concept phrase; True when words had to go."""
    if not concepts:
        return scene, False
    words = scene.split()

    def caption(count: int) -> str:
        kept = scene if count == len(words) else " ".join(words[:count])
        return DEFAULT_CAPTION_TEMPLATE.format(caption=kept, concepts=concepts) if kept else concepts

    def fits(count: int) -> bool:
        text = caption(count)
        return all(len(tok(text).input_ids) <= tok.model_max_length for tok in tokenizers)

    if fits(len(words)):
        return caption(len(words)), False
    low, high = 0, len(words) - 1  # the most words that fit; at worst none: the phrase alone (cut if even it is long)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return caption(low), True


def dropped_captions(dataset: Dataset, recipe: Recipe, concepts: list[list[dict]]) -> list[str]:
    """What each caption becomes when caption dropout drops it: the scene description goes, the concept stays.

    Naive captions never name the concept, so theirs become empty; Geom-Erasing ones keep their existence phrase
    and location tokens ("watermark <loc_3_3>"), so no dropped caption shows the concept without its tokens.
    Whether dropout helps depends on the model and the run's length (benchmarks/NOTES.md), so it stays off by default.
    """
    if recipe.train.mode == "naive":
        return [""] * len(dataset)
    phrases, side, grid = dataset_phrases(recipe.data.dataset), recipe.data.resolution, recipe.data.grid
    return [geom_caption("", kept, side, side, grid, phrases, caption_template="{concepts}") for kept in concepts]


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


def pixel_tensor(image: Image.Image, resolution: int, crop: Crop | None = None) -> torch.Tensor:
    """``(3, resolution, resolution)`` in [-1, 1]: the image's training square (``crop``; the center one if None)."""
    crop = crop or crop_window(*image.size, resolution)
    image = image.convert("RGB").resize(crop.size, Image.Resampling.BICUBIC)
    image = image.crop((crop.left, crop.top, crop.left + resolution, crop.top + resolution))
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


@torch.no_grad()
def _encode(vae, images: list[Image.Image], resolution: int, crops: list[Crop | None]) -> torch.Tensor:
    pixels = torch.stack([pixel_tensor(image, resolution, crop) for image, crop in zip(images, crops, strict=True)])
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    return torch.cat([dist.mean, dist.std], dim=1).to(torch.float16).cpu()


def vae_fingerprint(vae) -> str:
    """A digest of what the cached latents depend on: the VAE's config and its encoder's weights (a VAE with only
    a fine-tuned decoder, such as sd-vae-ft-mse, encodes the same latents and may share a cache)."""
    config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in vae.state_dict().items():
        if name.startswith(("encoder.", "quant_conv.")):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def latent_cache_dir(run_dir: Path, dataset: Dataset, vae, recipe: Recipe) -> Path:
    """Where a disk cache of these latents lives: a new folder whenever the dataset, VAE, resolution or crop differ."""
    crop = recipe.data.crop if recipe.data.crop == "center" else f"{recipe.data.crop}{recipe.train.seed}"
    key = f"{dataset._fingerprint}-vae{vae_fingerprint(vae)[:16]}-{recipe.data.resolution}-{crop}"
    return run_dir / "latents" / key


def cache_latents(
    dataset: Dataset,
    vae,
    resolution: int,
    cache_dir: Path | None,
    process_index: int = 0,
    num_processes: int = 1,
    crops: list[Crop] | None = None,
) -> list[torch.Tensor] | list[Path]:
    """Latent mean and std (stacked on channels) of every image's training square (``crops``; the centre ones by
    default): tensors in memory, or one file per image.

    On disk, each process encodes its share (every ``num_processes``-th image) and skips files already written,
    so an interrupted run does not encode again; the caller waits for all processes before reading.
    """
    windows = crops or [None] * len(dataset)
    if cache_dir is None:
        indices = list(range(len(dataset)))
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        paths = [cache_dir / f"{i:08d}.safetensors" for i in range(len(dataset))]
        indices = [i for i in range(process_index, len(dataset), num_processes) if not paths[i].is_file()]
    cached: list[torch.Tensor] = []
    for start in tqdm(range(0, len(indices), ENCODE_BATCH), desc="caching latents", disable=process_index != 0):
        chunk = indices[start : start + ENCODE_BATCH]
        encoded = _encode(vae, dataset.select(chunk)["image"], resolution, [windows[i] for i in chunk])
        if cache_dir is None:
            cached.extend(encoded)
        else:
            for i, latent in zip(chunk, encoded, strict=True):
                save_file({"latent_dist": latent.contiguous()}, paths[i])
    return cached if cache_dir is None else paths


class TrainingExamples(torch.utils.data.Dataset):
    """Per image: cached latent distribution, token ids per tokenizer (as captioned and as dropped), region mask,
    SDXL time ids."""

    def __init__(
        self,
        latents: list,
        input_ids: list[torch.Tensor],
        dropped_ids: list[torch.Tensor],
        masks: list[torch.Tensor],
        crops: list[Crop],
    ):
        self.latents, self.input_ids, self.dropped_ids, self.masks = latents, input_ids, dropped_ids, masks
        self.time_ids = torch.tensor([crop.time_ids() for crop in crops])

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
            "time_ids": self.time_ids[i],
        }


def collate(items: list[dict]) -> dict:
    return {
        "latent_dist": torch.stack([it["latent_dist"] for it in items]).float(),
        "input_ids": [torch.stack(ids) for ids in zip(*(it["input_ids"] for it in items), strict=True)],
        "dropped_ids": [torch.stack(ids) for ids in zip(*(it["dropped_ids"] for it in items), strict=True)],
        "mask": torch.stack([it["mask"] for it in items]),
        "time_ids": torch.stack([it["time_ids"] for it in items]),
    }


def drop_captions(
    input_ids: list[torch.Tensor], dropped_ids: list[torch.Tensor], rate: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """Replace each caption of the batch, with probability ``rate``, by its dropped form (:func:`dropped_captions`)
    in every tokenizer.

    Without it, a fine-tune never trains the empty prompt that classifier-free guidance subtracts.
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
