"""The training recipe: one YAML per experiment under ``recipes/``, validated before any work starts.

    accelerate launch train.py --config recipes/toy_geom_erasing.yaml train.max_steps=200

Every field carries its own help (``Field(description=...)``), so ``python -m erasure.recipe`` prints
the whole schema with defaults.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from erasure.config import LrScheduler, MixedPrecision, StrictModel, load_config

Mode = Literal["geom_erasing", "naive", "tokens_only"]


class ModelSection(StrictModel):
    pretrained: str = Field(
        description="hub id or local directory of a diffusers pipeline, or a single .safetensors checkpoint"
    )
    config: str | None = Field(
        None,
        description="for a single-file pretrained: a diffusers folder of the same architecture to read its configs "
        "and tokenizers from (needed offline; online diffusers finds them on the hub)",
    )
    kind: Literal["sd", "sdxl", "sd3", "flux"] | None = Field(
        None,
        description="pipeline family: SD 1.x/2.x, SDXL, SD3 / SD3.5 or FLUX.1; null reads it from model_index.json "
        "(or the file)",
    )
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    variant: str | None = Field(None, description="weights variant, e.g. fp16")


class DataSection(StrictModel):
    dataset: str = Field(description="an Implicit Concept Dataset directory written by `icd build`")
    concepts: list[str] = Field(description="implicit concepts to erase, as named in the dataset's `concepts`")
    grid: int = Field(4, ge=1, description="location-token grid size G (G x G bins)")
    resolution: int = Field(
        512,
        ge=8,
        description="side of the square training crop in pixels; images are resized to it by their short side",
    )
    crop: Literal["center", "random"] = Field(
        "center",
        description="where the square is cut from a non-square image: its center, or a place drawn once per image "
        "from train.seed (boxes and SDXL's crop time ids follow the crop)",
    )
    cache_latents: Literal["memory", "disk"] = Field(
        "memory",
        description="keep the VAE latents of every image in memory, or as safetensors under RUN_DIR/latents "
        "(resumable; for datasets larger than RAM); images are encoded once, never every step",
    )
    max_images: int | None = Field(None, ge=1, description="use only the first N rows (smoke tests)")


class LoraSection(StrictModel):
    rank: int = Field(4, ge=1, description="LoRA rank r")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha; defaults to the rank (scale 1)")
    target_modules: list[str] | None = Field(
        None,
        description="module names that receive LoRA adapters; null: the family's: to_q, to_k, to_v, to_out.0 (UNet), "
        "and for SD3 / FLUX also the joint blocks' text-stream add_q_proj, add_k_proj, add_v_proj, to_add_out",
    )
    full_unet: bool = Field(
        False,
        description="fine-tune every UNet weight (the transformer's for SD3 / FLUX: RUN/transformer/) instead of LoRA",
    )


class TrainSection(StrictModel):
    mode: Mode = Field("geom_erasing", description="geom_erasing | naive | tokens_only")
    max_steps: int = Field(1000, ge=1, description="optimizer steps")
    batch_size: int = Field(4, ge=1, description="images per device per micro-batch")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    learning_rate: float = Field(1e-4, gt=0, description="UNet (LoRA) learning rate")
    token_learning_rate: float = Field(5e-3, gt=0, description="learning rate of the location-token embeddings")
    caption_dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="share of training captions replaced by the empty caption (diffusers' proportion_empty_prompts), "
        "so the unconditional branch of classifier-free guidance learns the data too",
    )
    lr_scheduler: LrScheduler = Field("constant", description="a diffusers.optimization scheduler name")
    lr_warmup_steps: int = Field(0, ge=0, description="scheduler warm-up steps")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    mixed_precision: MixedPrecision | None = Field(
        None,
        description="accelerate mixed precision: no | fp16 | bf16; null takes the launcher's "
        "(accelerate launch --mixed_precision, or accelerate config), a value here wins over it",
    )
    gradient_checkpointing: bool = Field(False, description="trade compute for UNet activation memory")
    use_8bit_adam: bool = Field(False, description="bitsandbytes AdamW8bit (CUDA only)")
    snr_gamma: float | None = Field(None, gt=0, description="Min-SNR loss weighting gamma (5.0 is typical)")
    prediction_type: Literal["epsilon", "v_prediction"] | None = Field(
        None, description="training target; null keeps the base model scheduler's"
    )
    timestep_sampling: Literal["logit_normal", "mode", "cosmap", "none"] = Field(
        "logit_normal",
        description="SD3 / FLUX: density of the noise level sigma (diffusers' weighting_scheme; none is uniform)",
    )
    seed: int = Field(0, description="seed of data order, noise and initialisation")
    stop_at_step: int | None = Field(
        None,
        ge=1,
        description="end this session after this step, keeping a checkpoint (preemptible jobs); "
        "run again with checkpoint.resume=latest to finish",
    )
    num_workers: int = Field(0, ge=0, description="DataLoader workers")


class LossSection(StrictModel):
    region_alpha: float = Field(
        1.0, gt=0, description="Geom-Erasing loss weight outside concept boxes relative to inside; 1 is plain MSE"
    )


class CheckpointSection(StrictModel):
    every: int = Field(500, ge=1, description="save accelerator state every N steps")
    total_limit: int | None = Field(3, ge=1, description="keep at most N checkpoints")
    resume: str | None = Field(None, description="'latest' or a checkpoint directory")


class ValidationSection(StrictModel):
    prompts: list[str] = Field(default_factory=list, description="fixed prompts sampled during training")
    every: int = Field(500, ge=1, description="sample every N steps")
    num_inference_steps: int = Field(25, ge=1, description="sampler steps for validation images")
    seed: int = Field(0, description="generator seed of validation samples")


class ExportSection(StrictModel):
    negative_cells: int = Field(
        2, ge=1, description="location cells per concept in negative_prompt.txt: the concept's most frequent ones"
    )
    kohya: bool = Field(False, description="also write a WebUI/ComfyUI (kohya) LoRA file at the end of training")


class Recipe(StrictModel):
    """A whole experiment: what to train from, on which data, how, and where the run directory goes."""

    name: str = Field(description="run name")
    output_dir: str = Field("outputs/{name}", description="run directory; {name} is replaced by the name")
    model: ModelSection
    data: DataSection
    lora: LoraSection = LoraSection()
    train: TrainSection = TrainSection()
    loss: LossSection = LossSection()
    checkpoint: CheckpointSection = CheckpointSection()
    validation: ValidationSection = ValidationSection()
    export: ExportSection = ExportSection()
    report_to: str | None = Field("tensorboard", description="accelerate tracker, or null for none")

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir.format(name=self.name))


def load_recipe(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    return load_config(Recipe, path, overrides)


if __name__ == "__main__":
    print(json.dumps(Recipe.model_json_schema(), indent=2))
