"""The training loop, in the habits of diffusers' ``train_text_to_image_lora.py``.

``accelerator.prepare`` once; ``accelerator.accumulate`` for gradient accumulation; clipping only when gradients
sync; step counts after ``prepare``; checkpoints hold only the trained weights (a save-state pre-hook writes them
in the export formats) plus optimizer, scheduler and every process's RNG state, so ``checkpoint.resume=latest``
continues the same run exactly where it stopped, in the same data order. A checkpoint is written under a temporary
name and renamed when whole (a job killed while saving leaves no half checkpoint to resume from), and a resume
refuses a recipe that changed what decides the data order or the optimisation.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from erasure.config import ConfigError, dump_config
from erasure.recipe import Recipe, load_recipe
from erasure.runs import (
    CHECKPOINT_PREFIX,
    METADATA_FILE,
    RECIPE_FILE,
    checkpoint_step,
    checkpoints,
    latest_checkpoint,
)
from erasure.training.data import (
    TrainingExamples,
    cache_latents,
    collate,
    crop_windows,
    drop_captions,
    dropped_captions,
    latent_cache_dir,
    load_icd,
    location_tokens,
    region_mask,
    sample_latents,
    square_concepts,
    training_captions,
)
from erasure.training.export import (
    export_run,
    load_weights,
    negative_prompt,
    save_weights,
    write_recipe,
)
from erasure.training.loss import diffusion_loss, min_snr_weights
from erasure.training.models import (
    FLOW_KINDS,
    HALF_PRECISION,
    encode_prompts,
    flow_noising,
    flow_prediction,
    flow_sigmas,
    load_components,
    lora_targets,
    model_kind,
    trainable_unet_parameters,
)
from erasure.training.tokens import add_location_tokens, train_only_rows
from erasure.training.validation import log_validation, sampling_pipeline

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    finished: bool  # False when the run stopped at train.stop_at_step before max_steps
    num_processes: int
    mixed_precision: str  # what the run trained in: the recipe's, or the launcher's when the recipe leaves it unset
    shortened_captions: int  # scene captions cut so that their concept phrase and location tokens fit the tokenizer


class NoiseSource:
    """This process's generator of latent samples, noise and timesteps, saved by each process in every checkpoint.

    Resuming starts a new data iterator, which draws from torch's global RNG; with its own generator the resumed
    run still draws exactly the noise the uninterrupted run would have. Every process draws other noise (seed +
    rank), so every process keeps its own file: accelerate saves registered objects from the main process only,
    and each rank would resume with rank 0's generator.
    """

    FILE = "noise_generator_{}.safetensors"

    def __init__(self, seed: int, device: torch.device, process_index: int):
        self.generator = torch.Generator(device).manual_seed(seed + process_index)
        self.process_index = process_index

    def save(self, checkpoint: Path) -> None:
        save_file({"state": self.generator.get_state()}, checkpoint / self.FILE.format(self.process_index))

    def load(self, checkpoint: Path, num_processes: int) -> None:
        saved = len(list(checkpoint.glob(self.FILE.format("*"))))
        if saved != num_processes:
            raise ConfigError(
                f"{checkpoint} was saved by {saved} process(es), this run has {num_processes}: the data order and "
                f"noise of each process would change; resume with --num_processes {saved}"
            )
        self.generator.set_state(load_file(checkpoint / self.FILE.format(self.process_index))["state"])


def check_recipe(recipe: Recipe) -> None:
    """Settings that cannot work on this machine or together: fail before any model is loaded."""
    if recipe.train.mode == "tokens_only" and recipe.lora.full_unet:
        raise ConfigError("lora.full_unet=true contradicts train.mode=tokens_only (the UNet stays frozen there)")
    if recipe.train.use_8bit_adam and not torch.cuda.is_available():
        raise ConfigError(
            "train.use_8bit_adam=true needs a CUDA GPU (bitsandbytes' 8-bit AdamW); "
            "on a CPU set train.use_8bit_adam=false"
        )
    if recipe.checkpoint.resume not in (None, "latest") and not Path(recipe.checkpoint.resume).is_dir():
        raise ConfigError(f"checkpoint.resume = '{recipe.checkpoint.resume}': no such checkpoint directory")


def check_flow_recipe(recipe: Recipe) -> None:
    """What a flow-matching model (SD3 / FLUX, known once ``model.kind`` is) cannot train with."""
    if recipe.model.kind not in FLOW_KINDS:
        return
    unsupported = {
        "train.prediction_type": recipe.train.prediction_type,
        "train.snr_gamma": recipe.train.snr_gamma,
        "validation.prompts": recipe.validation.prompts,
        "export.kohya": recipe.export.kohya and recipe.model.kind != "flux",
    }
    for key, value in unsupported.items():
        if value:
            raise ConfigError(
                f"{key} = {value!r} does not apply to model.kind={recipe.model.kind}: it trains the flow-matching "
                "velocity, sampled by train.timestep_sampling (for now validation grids are UNet-only, kohya files "
                f"for UNets and FLUX); unset {key}"
            )


def make_optimizer(recipe: Recipe, unet_params: list, token_params: list) -> torch.optim.Optimizer:
    groups = [{"params": unet_params, "lr": recipe.train.learning_rate}] if unet_params else []
    if token_params:
        # No weight decay on the embedding table: its frozen rows get zero gradient and must stay exactly as they are.
        groups.append({"params": token_params, "lr": recipe.train.token_learning_rate, "weight_decay": 0.0})
    if not recipe.train.use_8bit_adam:
        return torch.optim.AdamW(groups)
    try:
        import bitsandbytes as bnb
    except ImportError as err:
        raise ConfigError("train.use_8bit_adam=true needs bitsandbytes: pip install 'implicit-erasure[gpu]'") from err
    return bnb.optim.AdamW8bit(groups)


# Fields a resumed run may change: where and how often it saves, samples, logs and loads data. Any other field
# decides the data order or the optimisation, and changing it would make the resumed run another run.
RESUMABLE_CHANGES = (
    "name",
    "output_dir",
    "report_to",
    "checkpoint",
    "validation",
    "export",
    "model.config",
    "data.cache_latents",
    "train.stop_at_step",
    "train.num_workers",
    "train.mixed_precision",
    "train.gradient_checkpointing",
)
# Schedulers whose learning rate does not depend on max_steps: a run with one of them may be extended.
STEPLESS_SCHEDULERS = ("constant", "constant_with_warmup")


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_resumable(recipe: Recipe, checkpoint: Path) -> None:
    """Refuse to resume ``checkpoint`` with a recipe whose data order or optimisation differ from the one it saved."""
    saved_file = next((p for p in (checkpoint / RECIPE_FILE, recipe.run_dir / RECIPE_FILE) if p.is_file()), None)
    if saved_file is None:
        logger.warning("%s holds no %s: resuming without checking the recipe", checkpoint, RECIPE_FILE)
        return
    old, new = _flatten(dump_config(load_recipe(saved_file))), _flatten(dump_config(recipe))
    free = RESUMABLE_CHANGES
    if old.get("train.lr_scheduler") in STEPLESS_SCHEDULERS:
        free += ("train.max_steps",)
    changed = [
        f"{key} ({old.get(key)!r} -> {new.get(key)!r})"
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and not any(key == f or key.startswith(f + ".") for f in free)
    ]
    if changed:
        raise ConfigError(
            f"checkpoint.resume: {checkpoint} was trained with another recipe ({saved_file}): {', '.join(changed)}. "
            "These decide the data order or the optimisation, so the resumed run would not continue that run: "
            "set them back, or train a new run (another output_dir, or checkpoint.resume=null)"
        )


def resume_checkpoint(recipe: Recipe) -> Path | None:
    """The checkpoint ``checkpoint.resume`` names (``latest``: the newest complete one), checked against the recipe."""
    resume = recipe.checkpoint.resume
    if resume is None:
        return None
    checkpoint = latest_checkpoint(recipe.run_dir) if resume == "latest" else Path(resume)
    if checkpoint is not None:
        check_resumable(recipe, checkpoint)
    return checkpoint


def _prune_checkpoints(run_dir: Path, total_limit: int | None) -> None:
    """Remove the oldest checkpoints so that, after the next save, at most ``total_limit`` remain."""
    found = checkpoints(run_dir)
    if total_limit is not None and len(found) >= total_limit:
        for old in found[: len(found) - total_limit + 1]:
            shutil.rmtree(old)


def save_checkpoint(accelerator: Accelerator, run_dir: Path, step: int, total_limit: int | None) -> Path:
    """``accelerator.save_state`` into a temporary directory, renamed to ``checkpoint-N`` once every process wrote.

    A job killed while saving leaves only a temporary directory, which the next save removes, so ``checkpoint-N``
    always holds a whole checkpoint.
    """
    target = run_dir / f"{CHECKPOINT_PREFIX}{step}"
    partial = run_dir / f".{target.name}.tmp"
    if accelerator.is_main_process:
        _prune_checkpoints(run_dir, total_limit)
        for stale in run_dir.glob(f".{CHECKPOINT_PREFIX}*.tmp"):
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if target.exists():  # the same step saved again, by a run resumed from before it
            shutil.rmtree(target)
        partial.rename(target)
    accelerator.wait_for_everyone()
    return target


def _record_training(run_dir: Path, result: TrainResult, num_captions: int) -> None:
    """Add how the run trained to its erasure.json, beside what the export wrote there."""
    path = run_dir / METADATA_FILE
    metadata = json.loads(path.read_text(encoding="utf-8"))
    metadata["training"] = {
        "num_processes": result.num_processes,
        "mixed_precision": result.mixed_precision,
        "captions": num_captions,
        "shortened_captions": result.shortened_captions,
    }
    path.write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")


def train(recipe: Recipe) -> TrainResult:
    """Train ``recipe`` under whatever ``accelerate launch`` set up; export the run when ``max_steps`` is reached."""
    check_recipe(recipe)
    recipe = recipe.model_copy(deep=True)
    recipe.model.kind = model_kind(recipe.model)  # recorded in recipe.yaml, so exports and resumes need no detection
    recipe.lora.target_modules = recipe.lora.target_modules or lora_targets(recipe.model.kind)
    check_flow_recipe(recipe)
    checkpoint = resume_checkpoint(recipe)
    dataset = load_icd(recipe)
    run_dir = recipe.run_dir
    accelerator = Accelerator(
        gradient_accumulation_steps=recipe.train.gradient_accumulation_steps,
        mixed_precision=recipe.train.mixed_precision,
        log_with=recipe.report_to,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=recipe.train.seed),
    )
    set_seed(recipe.train.seed)
    if accelerator.is_main_process:
        write_recipe(run_dir, recipe)

    parts = load_components(recipe.model, recipe.train.prediction_type)
    tokens = location_tokens(recipe)
    token_params = []
    for tokenizer, encoder in zip(parts.tokenizers, parts.text_encoders, strict=True):
        encoder.requires_grad_(False)
        if tokens:
            token_params.append(train_only_rows(encoder, add_location_tokens(tokenizer, encoder, tokens)))
    parts.vae.requires_grad_(False)
    unet_params = trainable_unet_parameters(parts.unet, recipe)

    # Frozen weights in the compute dtype, trained ones in fp32 (what mixed precision expects to scale). An encoder
    # whose token rows train stays fp32 whole, as in diffusers' textual inversion: a half-precision layer after an
    # fp32 embedding row is a dtype mix that CPU autocast does not resolve.
    weight_dtype = HALF_PRECISION.get(accelerator.mixed_precision, torch.float32)
    parts.vae.to(accelerator.device)  # fp32: it only encodes each image once, and SDXL's VAE overflows in fp16
    parts.unet.to(accelerator.device, dtype=weight_dtype)
    for encoder in parts.text_encoders:
        encoder.to(accelerator.device, dtype=torch.float32 if tokens else weight_dtype)
    if parts.t5 is not None:  # frozen, as the other frozen weights: only its output meets the transformer
        parts.t5.requires_grad_(False).to(accelerator.device, dtype=weight_dtype)
    cast_training_params(parts.unet, dtype=torch.float32)
    # What the UNet's frozen weights are stored in: its inputs are cast to it (a full fine-tune is all fp32; fp16 on a
    # CPU gets no autocast from accelerate, so nothing else would reconcile the two).
    unet_dtype = torch.float32 if recipe.lora.full_unet else weight_dtype
    if recipe.train.gradient_checkpointing:
        parts.unet.enable_gradient_checkpointing()
        if tokens:
            for encoder in parts.text_encoders:
                encoder.gradient_checkpointing_enable()

    side = recipe.data.resolution
    latent_size = side // (2 ** (len(parts.vae.config.block_out_channels) - 1))
    crops = crop_windows(dataset, recipe)
    latents = cache_latents(
        dataset,
        parts.vae,
        side,
        latent_cache_dir(run_dir, dataset, parts.vae, recipe) if recipe.data.cache_latents == "disk" else None,
        accelerator.process_index,
        accelerator.num_processes,
        crops,
    )
    accelerator.wait_for_everyone()  # a disk cache is written by all processes together
    concepts = square_concepts(dataset, recipe, crops)
    captions, shortened = training_captions(dataset, recipe, concepts, parts.tokenizers)
    if shortened:
        logger.warning("%d of %d captions were shortened to keep their location tokens", shortened, len(captions))
    examples = TrainingExamples(
        latents,
        parts.tokenize(captions),
        parts.tokenize(dropped_captions(dataset, recipe, concepts)),
        [region_mask(kept, side, side, latent_size) for kept in concepts],
        crops,
    )
    loader = torch.utils.data.DataLoader(
        examples,
        batch_size=recipe.train.batch_size,
        shuffle=True,
        collate_fn=collate,
        num_workers=recipe.train.num_workers,
    )
    template, _ = negative_prompt(dataset, recipe)

    optimizer = make_optimizer(recipe, unet_params, token_params)
    lr_scheduler = get_scheduler(
        recipe.train.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=recipe.train.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=recipe.train.max_steps * accelerator.num_processes,
    )

    trained = ([parts.unet] if unet_params else []) + (list(parts.text_encoders) if tokens else [])

    noise_source = NoiseSource(recipe.train.seed, accelerator.device, accelerator.process_index)

    def save_hook(models, weights, output_dir):  # runs on every process
        if accelerator.is_main_process:
            save_weights(Path(output_dir), recipe, parts.unet, parts.tokenizers, parts.text_encoders, tokens)
            write_recipe(Path(output_dir), recipe)  # what a resume checks its recipe against
        noise_source.save(Path(output_dir))
        weights.clear()  # the files above are the whole model state; accelerate must not write full models

    def load_hook(models, input_dir):
        models.clear()
        load_weights(Path(input_dir), recipe, parts.unet, parts.tokenizers, parts.text_encoders, tokens)
        noise_source.load(Path(input_dir), accelerator.num_processes)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
    *trained, optimizer, loader, lr_scheduler = accelerator.prepare(*trained, optimizer, loader, lr_scheduler)
    unet = trained[0] if unet_params else parts.unet
    encoders = trained[-len(parts.text_encoders) :] if tokens else parts.text_encoders

    steps_per_epoch = math.ceil(len(loader) / recipe.train.gradient_accumulation_steps)
    num_epochs = math.ceil(recipe.train.max_steps / steps_per_epoch)
    stop_at = min(recipe.train.stop_at_step or recipe.train.max_steps, recipe.train.max_steps)
    stopping_early = stop_at < recipe.train.max_steps
    if accelerator.is_main_process and recipe.report_to:
        accelerator.init_trackers(recipe.name)

    global_step, first_epoch, skip_batches = 0, 0, 0
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        global_step = checkpoint_step(checkpoint)
        first_epoch = global_step // steps_per_epoch
        skip_batches = (global_step % steps_per_epoch) * recipe.train.gradient_accumulation_steps
        logger.info("resumed from %s at step %d", checkpoint, global_step)
    elif recipe.checkpoint.resume == "latest":
        logger.info("no checkpoint in %s: starting from step 0", run_dir)

    scheduler = parts.scheduler
    alpha, snr_gamma = recipe.loss.region_alpha, recipe.train.snr_gamma
    params = [p for group in optimizer.param_groups for p in group["params"]]
    progress = tqdm(
        total=recipe.train.max_steps, initial=global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    step_loss = 0.0
    for epoch in range(first_epoch, num_epochs):
        if global_step >= stop_at:
            break
        loader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(loader, skip_batches) if epoch == first_epoch else loader
        for batch in batches:
            with accelerator.accumulate(*trained):
                generator = noise_source.generator
                latents = sample_latents(batch["latent_dist"], parts.vae.config, generator).to(unet_dtype)
                noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
                if parts.flow:
                    sigmas = flow_sigmas(scheduler, len(latents), recipe.train.timestep_sampling, generator)
                    noisy, target = flow_noising(latents, noise, sigmas)
                else:
                    timesteps = torch.randint(
                        0,
                        scheduler.config.num_train_timesteps,
                        (len(latents),),
                        device=latents.device,
                        generator=generator,
                    )
                    noisy = scheduler.add_noise(latents, noise, timesteps)
                input_ids = batch["input_ids"]
                if recipe.train.caption_dropout > 0:  # no draw at 0, so runs without it keep their noise sequence
                    input_ids = drop_captions(input_ids, batch["dropped_ids"], recipe.train.caption_dropout, generator)
                weights = None
                if parts.flow:
                    prediction = flow_prediction(
                        parts, unet, noisy, sigmas, encoders, input_ids, unet_dtype, bool(tokens)
                    )
                else:
                    with torch.set_grad_enabled(bool(tokens)):
                        hidden, added = encode_prompts(encoders, input_ids, batch["time_ids"], unet_dtype)
                    if scheduler.config.prediction_type == "epsilon":
                        target = noise
                    elif scheduler.config.prediction_type == "v_prediction":
                        target = scheduler.get_velocity(latents, noise, timesteps)
                    else:
                        raise ValueError(f"Unknown prediction type {scheduler.config.prediction_type}")
                    prediction = unet(noisy, timesteps, hidden, added_cond_kwargs=added, return_dict=False)[0]
                    weights = min_snr_weights(scheduler, timesteps, snr_gamma) if snr_gamma else None
                loss = diffusion_loss(prediction, target, batch["mask"], alpha, weights)
                step_loss += accelerator.gather(loss.detach()).mean().item() / recipe.train.gradient_accumulation_steps
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, recipe.train.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()

            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{step_loss:.4f}")
            accelerator.log({"loss": step_loss, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
            step_loss = 0.0
            if global_step % recipe.checkpoint.every == 0 or (stopping_early and global_step == stop_at):
                save_checkpoint(accelerator, run_dir, global_step, recipe.checkpoint.total_limit)
            if (
                recipe.validation.prompts
                and global_step % recipe.validation.every == 0
                and accelerator.is_main_process
            ):
                pipe = sampling_pipeline(parts, parts.unet)
                log_validation(accelerator, pipe, recipe.validation, template, recipe.data.resolution, global_step)
            if global_step >= stop_at:
                break
    progress.close()

    accelerator.wait_for_everyone()
    finished = global_step >= recipe.train.max_steps
    result = TrainResult(
        run_dir, global_step, finished, accelerator.num_processes, accelerator.mixed_precision, shortened
    )
    if finished and accelerator.is_main_process:
        save_weights(run_dir, recipe, parts.unet, parts.tokenizers, parts.text_encoders, tokens)
        export_run(run_dir, kohya=recipe.export.kohya, global_step=global_step)
        _record_training(run_dir, result, len(captions))
    accelerator.end_training()
    return result
