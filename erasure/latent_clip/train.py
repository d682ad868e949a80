"""Train a Latent-CLIP on (latent, caption) pairs, optionally distilled from a pixel CLIP teacher:

    accelerate launch -m erasure.latent_clip.train --config recipes/latent_clip_toy.yaml [key=value ...]

The images of an HF dataset (``save_to_disk``; an Implicit Concept Dataset works as is) are encoded once by the
pipeline's VAE and cached as safetensors under RUN_DIR/latents (mean and std, so every step draws a fresh latent
sample); a teacher's image embeddings are cached the same way. The text tower uses the pipeline's tokenizer, so
the model reads the same captions as the UNet; Geom-Erasing location tokens in captions (an ICD's ``geom_caption``)
become single tokenizer entries or are stripped (``data.location_tokens``). Each step's batch is drawn from a
generator seeded by the step, so ``train.resume=latest`` continues in the same data order. The model lands in
RUN_DIR (``LatentClip.from_pretrained``) with RUN_DIR/latent_clip_run.json recording the recipe and versions.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from datasets_icd.geometry import DEFAULT_GRID, LOCATION_TOKEN, location_vocabulary
from erasure.config import ConfigError, LrScheduler, StrictModel, dump_config, load_config
from erasure.latent_clip.model import LatentClip, LatentClipSpec

RUN_RECORD = "latent_clip_run.json"
TEACHER_FILE = "teacher_image_embeds.safetensors"


class DataSection(StrictModel):
    dataset: str = Field(description="a datasets.Dataset directory (save_to_disk) with an image and a caption column")
    pipeline: str = Field(description="diffusers pipeline whose VAE encodes the images and whose tokenizer is used")
    resolution: int = Field(512, ge=8, description="images are resized to this square side before encoding")
    image_column: str = Field("image", description="column holding the images")
    caption_column: str = Field("caption", description="column holding the captions")
    max_images: int | None = Field(None, ge=2, description="use only the first N rows")
    held_out: int = Field(0, ge=0, description="the last N rows are never trained on (for evaluation)")
    location_tokens: Literal["add", "strip"] = Field(
        "add",
        description="captions with Geom-Erasing location tokens (an ICD's geom_caption): 'add' makes each <loc_r_c> "
        "one new tokenizer entry, as the Geom-Erasing trainer does; 'strip' removes them, keeping the concept names",
    )


class TrainSection(StrictModel):
    max_steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(64, ge=2, description="pairs per device per step (the contrastive negatives)")
    learning_rate: float = Field(5e-4, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay")
    lr_scheduler: LrScheduler = Field("cosine", description="a diffusers.optimization scheduler name")
    lr_warmup_steps: int = Field(100, ge=0, description="scheduler warm-up steps")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field("no", description="accelerate mixed precision")
    seed: int = Field(0, description="seed of initialisation, batches and latent samples")
    checkpoint_every: int = Field(500, ge=1, description="save accelerator state every N steps")
    resume: Literal["latest"] | None = Field(None, description="'latest' continues from the newest checkpoint")


class DistillSection(StrictModel):
    teacher: str | None = Field(None, description="local transformers CLIPModel directory; null trains without one")
    weight: float = Field(1.0, ge=0, description="weight of 1 - cos(student, teacher image embedding)")


class LatentClipRecipe(StrictModel):
    name: str = Field(description="run name")
    output_dir: str = Field("outputs/{name}", description="run directory; {name} is replaced by the name")
    model: LatentClipSpec = LatentClipSpec()
    data: DataSection
    train: TrainSection = TrainSection()
    distill: DistillSection = DistillSection()

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))


def load_pairs(recipe: LatentClipRecipe):
    """The dataset, checked for the recipe's columns before any model is loaded."""
    from datasets import load_from_disk

    path = Path(recipe.data.dataset)
    if not (path / "dataset_info.json").is_file():
        raise ConfigError(f"data.dataset = '{path}': not a dataset saved with save_to_disk (e.g. from `icd build`)")
    dataset = load_from_disk(str(path))
    for key in ("image_column", "caption_column"):
        column = getattr(recipe.data, key)
        if column not in dataset.column_names:
            raise ConfigError(f"data.{key} = '{column}' is not a column of {path}; columns: {dataset.column_names}")
    if recipe.data.max_images is not None:
        dataset = dataset.select(range(min(recipe.data.max_images, len(dataset))))
    if len(dataset) - recipe.data.held_out < recipe.train.batch_size:
        raise ConfigError(
            f"{path}: {len(dataset)} rows minus data.held_out={recipe.data.held_out} is fewer than "
            f"train.batch_size={recipe.train.batch_size}"
        )
    return dataset.rename_column(recipe.data.image_column, "image") if recipe.data.image_column != "image" else dataset


@torch.no_grad()
def teacher_image_embeds(teacher_dir: str, images, cache: Path, device, batch_size: int = 32) -> torch.Tensor:
    """Unit-norm image embeddings of a pixel CLIP for every image, computed once and cached as safetensors."""
    from safetensors.torch import load_file, save_file
    from tqdm.auto import tqdm
    from transformers import CLIPImageProcessor, CLIPModel

    if cache.is_file():
        return load_file(cache)["image_embeds"]
    teacher = CLIPModel.from_pretrained(teacher_dir, use_safetensors=True).to(device).eval()
    processor = CLIPImageProcessor.from_pretrained(teacher_dir)
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc="teacher embeddings"):
        pixels = processor(images=images[start : start + batch_size], return_tensors="pt").pixel_values
        features = teacher.get_image_features(pixel_values=pixels.to(device)).pooler_output
        chunks.append(F.normalize(features, dim=-1).cpu())
    embeds = torch.cat(chunks)
    save_file({"image_embeds": embeds.contiguous()}, cache)
    return embeds


def prepare_captions(captions: list[str], tokenizer, location_tokens: str) -> list[str]:
    """Captions as the text tower reads them. A tokenizer that lacks ``<loc_r_c>`` spells each one into about nine
    pieces, which pushes the rest of a caption past ``max_length``; 'add' gives it every token of the grid (at least
    the default 4x4), so a cell unseen in training is one token too; 'strip' drops them with the space before them."""
    found = {(int(r), int(c)) for caption in captions for r, c in LOCATION_TOKEN.findall(caption)}
    if not found:
        return captions
    if location_tokens == "strip":
        return [re.sub(r"\s*" + LOCATION_TOKEN.pattern, "", caption) for caption in captions]
    if location_tokens != "add":
        raise ValueError(f"Unknown location_tokens {location_tokens!r}: use 'add' or 'strip'")
    tokenizer.add_tokens(location_vocabulary(max(DEFAULT_GRID, 1 + max(max(cell) for cell in found))))
    return captions


def _cached_latent_dists(paths: list[Path]) -> torch.Tensor:
    from safetensors.torch import load_file

    return torch.stack([load_file(path)["latent_dist"] for path in paths]).float()


def train(recipe: LatentClipRecipe) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers import AutoencoderKL
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm
    from transformers import CLIPTokenizer

    from erasure.runs import latest_checkpoint
    from erasure.training.data import cache_latents, sample_latents

    dataset = load_pairs(recipe)
    run_dir = recipe.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator(mixed_precision=recipe.train.mixed_precision)
    set_seed(recipe.train.seed)

    vae = AutoencoderKL.from_pretrained(recipe.data.pipeline, subfolder="vae").to(accelerator.device).eval()
    tokenizer = CLIPTokenizer.from_pretrained(recipe.data.pipeline, subfolder="tokenizer")
    paths = cache_latents(
        dataset, vae, recipe.data.resolution, run_dir / "latents", accelerator.process_index, accelerator.num_processes
    )
    accelerator.wait_for_everyone()
    train_rows = len(dataset) - recipe.data.held_out
    latent_dists = _cached_latent_dists(paths[:train_rows])
    latent_shape = (latent_dists.shape[1] // 2, *latent_dists.shape[2:])
    spec = recipe.model
    if latent_shape != (spec.latent_channels, spec.latent_size, spec.latent_size):
        raise ConfigError(
            f"the VAE of {recipe.data.pipeline} makes latents of shape {latent_shape} at data.resolution="
            f"{recipe.data.resolution}: set model.latent_channels={latent_shape[0]} and model.latent_size="
            f"{latent_shape[1]}"
        )
    captions = prepare_captions(
        list(dataset.select(range(train_rows))[recipe.data.caption_column]), tokenizer, recipe.data.location_tokens
    )
    input_ids = tokenizer(
        captions, padding="max_length", max_length=spec.max_length, truncation=True, return_tensors="pt"
    ).input_ids

    teacher = None
    if recipe.distill.teacher is not None:
        images = list(dataset.select(range(train_rows))["image"])
        teacher = teacher_image_embeds(recipe.distill.teacher, images, run_dir / TEACHER_FILE, accelerator.device)
        if teacher.shape[1] != spec.projection_dim:
            raise ConfigError(
                f"distill.teacher {recipe.distill.teacher} embeds images in {teacher.shape[1]} dimensions: "
                f"set model.projection_dim={teacher.shape[1]} to match it"
            )

    model = LatentClip.build(spec, tokenizer)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=recipe.train.learning_rate, weight_decay=recipe.train.weight_decay
    )
    scheduler = get_scheduler(
        recipe.train.lr_scheduler,
        optimizer,
        num_warmup_steps=recipe.train.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=recipe.train.max_steps * accelerator.num_processes,
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    start = 0
    checkpoint = latest_checkpoint(run_dir) if recipe.train.resume == "latest" else None
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        start = int(checkpoint.name.split("-")[1])

    scaling = vae.config
    bar = tqdm(range(start, recipe.train.max_steps), desc="latent-clip", disable=not accelerator.is_main_process)
    for step in bar:
        # A generator per (step, process): a resumed run draws exactly the batches the uninterrupted run would.
        seed = (recipe.train.seed * 10**7 + step) * 1024 + accelerator.process_index
        generator = torch.Generator().manual_seed(seed)
        idx = torch.randperm(train_rows, generator=generator)[: recipe.train.batch_size]
        latents = sample_latents(latent_dists[idx], scaling, generator).to(accelerator.device)
        with accelerator.autocast():
            output = model(latents, input_ids[idx].to(accelerator.device))
            loss = output.loss
            if teacher is not None:
                cosine = (output.image_embeds * teacher[idx].to(accelerator.device)).sum(dim=-1)
                loss = loss + recipe.distill.weight * (1 - cosine).mean()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), recipe.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        accelerator.unwrap_model(model).clamp_temperature()
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % recipe.train.checkpoint_every == 0 and step + 1 < recipe.train.max_steps:
            name = f"checkpoint-{step + 1}"
            accelerator.save_state(str(run_dir / name))
            if accelerator.is_main_process:  # keep only the newest: resuming needs nothing older
                for old in run_dir.glob("checkpoint-*"):
                    if old.name != name:
                        shutil.rmtree(old)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(run_dir)
        _write_record(recipe, run_dir, start, final_loss=loss.item() if start < recipe.train.max_steps else None)
    return run_dir


def _write_record(recipe: LatentClipRecipe, run_dir: Path, resumed_at: int, final_loss: float | None) -> None:
    import diffusers
    import transformers

    record = {
        "recipe": dump_config(recipe),
        "resumed_at_step": resumed_at,
        "final_loss": final_loss,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "diffusers": diffusers.__version__,
        },
    }
    (run_dir / RUN_RECORD).write_text(json.dumps(record, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="recipe YAML, e.g. recipes/latent_clip_toy.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.max_steps=50")
    args = parser.parse_args(argv)
    try:
        run_dir = train(load_config(LatentClipRecipe, args.config, args.overrides))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"saved Latent-CLIP to {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
