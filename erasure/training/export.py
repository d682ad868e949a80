"""What a run leaves for users, in the formats their tools load, and the same files inside every checkpoint.

    RUN_DIR/pytorch_lora_weights.safetensors   pipe.load_lora_weights(RUN_DIR)   (or unet/ for a full fine-tune)
    RUN_DIR/learned_embeds.safetensors         erasure.load_run(pipe, RUN_DIR), with the LoRA
    RUN_DIR/negative_prompt.txt                "{prompt}, watermark <loc_0_3> <loc_3_3>"
    RUN_DIR/erasure.json                       recipe, base model, versions, dataset, cells, sha256 of every file
    RUN_DIR/NAME.safetensors                   with kohya=True: lora_unet_... keys with .alpha, for WebUI/ComfyUI
    RUN_DIR/webui/                             with webui=True: the location tokens as WebUI/ComfyUI embeddings
                                               and the negative prompt as each UI reads it (erasure.webui)
    FILE.safetensors                           with single_file=FILE: the base model with the run merged in, in
                                               the original Stable Diffusion layout (erasure.checkpoint_file)

The LoRA is written by diffusers' own ``save_lora_weights`` with peft's adapter config as metadata, so an alpha
that differs from the rank loads back with the right scale. The kohya file follows kohya-ss sd-scripts
(``networks/lora.py``): ``lora_unet_`` + the module path with ``_`` for ``.``, in diffusers' UNet names for SD 1.x
and in the original (sgm) names for SDXL, whose kohya UNet is the original one; ``.alpha`` scales by alpha / rank.
A FLUX LoRA goes to the original (Black Forest Labs) module names that kohya's ``networks/lora_flux.py`` and ComfyUI
use (``lora_unet_double_blocks_0_img_attn_qkv``), where one linear layer holds what diffusers splits in several.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from datasets import Dataset
from diffusers import UNet2DConditionModel
from diffusers.utils import (
    SAFE_WEIGHTS_INDEX_NAME,
    SAFETENSORS_WEIGHTS_NAME,
    convert_state_dict_to_kohya,
    convert_unet_state_dict_to_peft,
)
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from datasets_icd.geometry import fill_negative_prompt, frequent_cells, negative_prompt_template
from erasure.checkpoint_file import save_single_file, unet_original_name
from erasure.config import ConfigError, dump_config
from erasure.loading import load_pipeline
from erasure.recipe import Recipe, load_recipe
from erasure.runs import (
    EMBEDS_FILES,
    LORA_FILE,
    METADATA_FILE,
    NEGATIVE_PROMPT_FILE,
    RECIPE_FILE,
    TRANSFORMER_DIR,
    UNET_DIR,
    checkpoint_step,
    latest_checkpoint,
)
from erasure.training.data import dataset_phrases, load_icd
from erasure.training.models import FLOW_KINDS, PIPELINES
from erasure.training.tokens import restore_embeddings, save_embeddings
from erasure.webui import WEBUI_DIR, write_webui_files

VERSIONED = ("torch", "diffusers", "transformers", "peft", "accelerate", "datasets", "safetensors", "implicit-erasure")


def _lora_prefix(recipe: Recipe) -> str:
    """The trained component: the LoRA keys' prefix, as diffusers' ``save_lora_weights`` names it, and the folder of
    a full fine-tune (``load_run`` puts that folder's model in the pipeline attribute of the same name)."""
    return TRANSFORMER_DIR if recipe.model.kind in FLOW_KINDS else UNET_DIR


def save_weights(
    out_dir: Path, recipe: Recipe, unet, tokenizers: list, text_encoders: list, tokens: list[str]
) -> None:
    """The trained weights only: LoRA (or the full UNet) and the location-token rows."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if recipe.lora.full_unet:
        unet.save_pretrained(out_dir / _lora_prefix(recipe), safe_serialization=True)
    elif recipe.train.mode != "tokens_only":
        # peft's key names (lora_A / lora_B) for every family: diffusers' older UNet names exist for the attention
        # projections only, and a file that mixes both loses its attention LoRA in load_lora_weights without a word.
        lora, prefix = get_peft_model_state_dict(unet), _lora_prefix(recipe)
        PIPELINES[recipe.model.kind].save_lora_weights(
            out_dir,
            **{
                f"{prefix}_lora_layers": lora,
                f"{prefix}_lora_adapter_metadata": unet.peft_config["default"].to_dict(),
            },
            safe_serialization=True,
        )
    if tokens:
        save_embeddings(out_dir, tokens, tokenizers, text_encoders)


def load_weights(in_dir: Path, recipe: Recipe, unet, tokenizers: list, text_encoders: list, tokens: list[str]) -> None:
    """Inverse of :func:`save_weights` into models prepared the same way (resuming from a checkpoint)."""
    if recipe.lora.full_unet:
        unet.load_state_dict(_model_state_dict(in_dir / _lora_prefix(recipe)))
    elif recipe.train.mode != "tokens_only":
        prefix = _lora_prefix(recipe)
        lora = {k.removeprefix(f"{prefix}."): v for k, v in load_file(in_dir / LORA_FILE).items()}
        if prefix == "unet":  # checkpoints written before peft names were used for the UNet too
            lora = convert_unet_state_dict_to_peft(lora)
        result = set_peft_model_state_dict(unet, lora, adapter_name="default")
        if result.unexpected_keys:
            raise ValueError(f"{in_dir / LORA_FILE}: keys that do not fit this UNet: {result.unexpected_keys[:3]}")
    if tokens:
        restore_embeddings(in_dir, tokenizers, text_encoders)


def _model_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The weights ``save_pretrained`` wrote into ``folder``: one file, or the shards its index names (a UNet
    larger than ``max_shard_size``, as SDXL's is in fp32)."""
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    single = [SAFETENSORS_WEIGHTS_NAME]
    names = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else single
    state: dict[str, torch.Tensor] = {}
    for name in names:
        state |= load_file(folder / name)
    return state


def negative_prompt(dataset: Dataset, recipe: Recipe) -> tuple[str, dict[str, list[list[int]]]]:
    """The negative-prompt template and, per concept, its most frequent cells as ``[row, col, count]``.

    Templates of several concepts compose by filling one into the next: both keep the single ``{prompt}``.
    A naive run has no location tokens, so its template names the concept only.
    """
    template, cells = "{prompt}", {}
    sizes = list(zip(dataset["width"], dataset["height"], strict=True))
    phrases = dataset_phrases(recipe.data.dataset)  # what the captions said: `icd build --phrase`, or the name
    for concept in recipe.data.concepts:
        top = frequent_cells(dataset["concepts"], sizes, concept, recipe.data.grid, recipe.export.negative_cells)
        cells[concept] = [[row, col, count] for (row, col), count in top]
        used = [cell for cell, _ in top] if recipe.train.mode != "naive" else []
        template = fill_negative_prompt(negative_prompt_template(concept, used, phrases.get(concept)), template)
    return template, cells


def kohya_state_dict(
    lora_file: Path, alpha: float, original_unet_config: dict | None = None
) -> dict[str, torch.Tensor]:
    """diffusers LoRA file → kohya keys (``lora_unet_..._to_q.lora_down.weight``) with each module's ``.alpha``.

    With ``original_unet_config`` (SDXL's UNet config) the modules get their original names
    (``lora_unet_input_blocks_4_1_...``), as kohya's SDXL LoRAs have them.
    """
    saved = load_file(lora_file)
    if not all(k.startswith("unet.") for k in saved):
        raise ValueError(f"{lora_file}: only UNet LoRA weights are written in the kohya format, not text encoders")
    peft_keys = convert_unet_state_dict_to_peft({k.removeprefix("unet."): v for k, v in saved.items()})
    if original_unet_config is not None:
        peft_keys = {unet_original_name(k, original_unet_config): v for k, v in peft_keys.items()}
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_keys.items()})
    # diffusers' converter writes alpha = rank (scale 1); ours may differ, and WebUI scales by alpha / rank.
    return {k: torch.tensor(float(alpha)) if k.endswith(".alpha") else v.contiguous() for k, v in kohya.items()}


# diffusers' FLUX modules under each original (Black Forest Labs) module, in the order the fused one stacks them.
FLUX_DOUBLE_BLOCK = {  # transformer_blocks.N. -> double_blocks_N_
    "img_attn_qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "img_attn_proj": ("attn.to_out.0",),
    "img_mlp_0": ("ff.net.0.proj",),
    "img_mlp_2": ("ff.net.2",),
    "img_mod_lin": ("norm1.linear",),
    "txt_attn_qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "txt_attn_proj": ("attn.to_add_out",),
    "txt_mlp_0": ("ff_context.net.0.proj",),
    "txt_mlp_2": ("ff_context.net.2",),
    "txt_mod_lin": ("norm1_context.linear",),
}
FLUX_SINGLE_BLOCK = {  # single_transformer_blocks.N. -> single_blocks_N_
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation_lin": ("norm.linear",),
}
FLUX_MLP_RATIO = 4  # a single block's proj_mlp is 4 times its attention width in every FLUX.1 model


def flux_kohya_state_dict(lora_file: Path, alpha: float) -> dict[str, torch.Tensor]:
    """diffusers FLUX LoRA file → kohya / ComfyUI keys in the original module names, with each module's ``.alpha``.

    Where one original layer holds several diffusers modules (``img_attn_qkv`` = to_q, to_k, to_v), their LoRAs are
    stacked into one of rank n × rank: down matrices one above the other, up matrices on the block diagonal, alpha n
    × alpha, so that alpha / rank and every part's update stay as trained; a part without a LoRA (proj_mlp, when only
    the attention was trained) gets zeros.
    """
    saved = load_file(lora_file)
    left = set(saved)
    kohya: dict[str, torch.Tensor] = {}
    for blocks, original, table in (
        ("transformer_blocks", "double_blocks", FLUX_DOUBLE_BLOCK),
        ("single_transformer_blocks", "single_blocks", FLUX_SINGLE_BLOCK),
    ):
        indices = sorted({int(k.split(".")[2]) for k in saved if k.startswith(f"transformer.{blocks}.")})
        for i, (name, parts) in itertools.product(indices, table.items()):
            keys = [f"transformer.{blocks}.{i}.{part}" for part in parts]
            present = [k for k in keys if f"{k}.lora_A.weight" in saved]
            if not present:
                continue
            rank, width = saved[f"{present[0]}.lora_A.weight"].shape
            dtype = saved[f"{present[0]}.lora_A.weight"].dtype
            outs = {p: saved[f"{k}.lora_B.weight"].shape[0] for k, p in zip(keys, parts, strict=True) if k in present}
            mlp_only = outs.get("proj_mlp", 0) // FLUX_MLP_RATIO
            attention = next((w for p, w in outs.items() if p != "proj_mlp"), mlp_only)
            downs, ups = [], []
            for key, part in zip(keys, parts, strict=True):
                if key in present:
                    down, up = saved[f"{key}.lora_A.weight"], saved[f"{key}.lora_B.weight"]
                    left -= {f"{key}.lora_A.weight", f"{key}.lora_B.weight"}
                else:
                    out = attention * (FLUX_MLP_RATIO if part == "proj_mlp" else 1)
                    down, up = torch.zeros(rank, width, dtype=dtype), torch.zeros(out, rank, dtype=dtype)
                downs.append(down)
                ups.append(up)
            prefix = f"lora_unet_{original}_{i}_{name}"
            kohya[f"{prefix}.lora_down.weight"] = torch.cat(downs).contiguous()
            kohya[f"{prefix}.lora_up.weight"] = torch.block_diag(*ups).contiguous()
            kohya[f"{prefix}.alpha"] = torch.tensor(float(alpha) * len(parts))
    if left:
        raise ValueError(f"{lora_file}: no kohya name for {sorted(left)[:3]} (only the transformer blocks have one)")
    return kohya


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weight_files(directory: Path) -> list[Path]:
    names = [LORA_FILE, *EMBEDS_FILES]
    files = [directory / name for name in names if (directory / name).is_file()]
    full = [p for name in (UNET_DIR, TRANSFORMER_DIR) for p in sorted((directory / name).glob("*")) if p.is_file()]
    return files + full


def merged_pipeline(run_dir: Path, recipe: Recipe) -> Any:
    """The base model with the run in its weights (the LoRA fused at its trained scale, or the fine-tuned UNet).

    The learned token rows are cut off again: a single-file checkpoint has no tokenizer to name them, so they go in
    embedding files (:mod:`erasure.webui`).
    """
    loaded = load_pipeline(recipe.model.pretrained, device="cpu", dtype="float32", run=run_dir)
    pipe, run = loaded.pipeline, loaded.run
    if run.weights == "lora":
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    for encoder in (pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if encoder is not None and run.tokens:  # the tokens are the last rows: load_textual_inversion appends them
            encoder.resize_token_embeddings(encoder.get_input_embeddings().num_embeddings - len(run.tokens))
    return pipe


def _write_kohya(run_dir: Path, recipe: Recipe) -> Path:
    if not (run_dir / LORA_FILE).is_file():
        raise ConfigError(f"{run_dir}: --format kohya needs a LoRA run ({LORA_FILE}); this run has none")
    if recipe.model.kind == "sd3":
        raise ConfigError(f"{run_dir}: kohya files are written for SD 1.x / 2.x, SDXL and FLUX; SD3: {LORA_FILE}")
    alpha = recipe.lora.alpha or recipe.lora.rank
    if recipe.model.kind == "flux":
        kohya = flux_kohya_state_dict(run_dir / LORA_FILE, alpha)
    else:
        unet_config = None
        if recipe.model.kind == "sdxl":
            unet_config = UNet2DConditionModel.load_config(recipe.model.pretrained, subfolder="unet")
        kohya = kohya_state_dict(run_dir / LORA_FILE, alpha, unet_config)
    kohya_file = run_dir / f"{recipe.name}.safetensors"
    save_file(kohya, kohya_file)
    return kohya_file


def run_recipe(run_dir: Path) -> Recipe:
    """The resolved recipe a run was trained with; a clear error when ``run_dir`` is not a run."""
    if not (run_dir / RECIPE_FILE).is_file():
        raise ConfigError(f"{run_dir}: no {RECIPE_FILE}; expected a run directory written by train.py")
    return load_recipe(run_dir / RECIPE_FILE)


def default_single_file(run_dir: Path) -> Path:
    """``RUN/webui/NAME-merged.safetensors``: the merged checkpoint, beside the embeddings it needs."""
    return run_dir / WEBUI_DIR / f"{run_recipe(run_dir).name}-merged.safetensors"


def export_run(
    run_dir: str | Path,
    checkpoint: str | Path | None = None,
    kohya: bool = False,
    global_step: int | None = None,
    webui: bool = False,
    single_file: str | Path | None = None,
) -> dict:
    """Write negative prompt, metadata and, on request, the files WebUI/ComfyUI users load; returns the metadata.

    ``checkpoint`` (a directory, or "latest") first copies that checkpoint's weights into the run directory,
    e.g. to export a run that was stopped before its last step. ``kohya``: the LoRA as ``NAME.safetensors``.
    ``webui``: that LoRA (for a LoRA run), and the location tokens as embeddings with the negative prompt spelled for
    each UI, in ``webui/``. ``single_file``: the base model with the run merged in, as one original-layout checkpoint
    at that path, and the embeddings of ``webui/`` to go beside it.
    """
    run_dir = Path(run_dir)
    recipe = run_recipe(run_dir)
    if checkpoint is not None:
        source = latest_checkpoint(run_dir) if checkpoint == "latest" else Path(checkpoint)
        if source is None or not source.is_dir():
            raise ConfigError(f"{run_dir}: no checkpoint {checkpoint!r} to export from")
        for path in _weight_files(source):
            target = run_dir / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        global_step = checkpoint_step(source)
    earlier = (
        json.loads((run_dir / METADATA_FILE).read_text(encoding="utf-8"))
        if (run_dir / METADATA_FILE).is_file()
        else {}
    )
    if checkpoint is None and global_step is None:  # re-export: keep what training recorded
        global_step = earlier.get("global_step")
    if not _weight_files(run_dir):
        raise ConfigError(f"{run_dir}: no trained weights; finish training or pass a checkpoint to export from")

    dataset = load_icd(recipe)
    template, cells = negative_prompt(dataset, recipe)
    (run_dir / NEGATIVE_PROMPT_FILE).write_text(template + "\n", encoding="utf-8")
    files = [*_weight_files(run_dir), run_dir / NEGATIVE_PROMPT_FILE, run_dir / RECIPE_FILE]
    if kohya or (webui and (run_dir / LORA_FILE).is_file()):
        files.append(_write_kohya(run_dir, recipe))
    if webui or single_file is not None:
        files += write_webui_files(run_dir, recipe.name)
    if single_file is not None:
        files.append(save_single_file(merged_pipeline(run_dir, recipe), single_file))

    metadata = {
        "recipe": dump_config(recipe),
        "base_model": dump_config(recipe.model),
        "global_step": global_step,
        "versions": {name: importlib.metadata.version(name) for name in VERSIONED},
        "dataset": {"path": recipe.data.dataset, "fingerprint": dataset._fingerprint, "num_rows": len(dataset)},
        "negative_prompt": {"template": template, "frequent_cells": cells},
        "files": {os.path.relpath(path, run_dir): sha256(path) for path in files},  # a single file may be outside
    }
    if "training" in earlier and checkpoint is None:  # how the run trained (processes, precision, captions)
        metadata["training"] = earlier["training"]
    (run_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    return metadata


def write_recipe(run_dir: Path, recipe: Recipe) -> None:
    """The resolved recipe (overrides applied) that ``erasure export`` and readers of the run rely on."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RECIPE_FILE).write_text(yaml.safe_dump(dump_config(recipe), sort_keys=False), encoding="utf-8")
