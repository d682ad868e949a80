"""The run directory: its file names, reading it, and putting a run into a pipeline with :func:`load_run`.

    from erasure import SLDPipeline, load_run
    pipe = SLDPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    run = load_run(pipe, "outputs/RUN")                 # LoRA or UNet, learned tokens in every text encoder
    image = pipe("a photo", concept_negative_prompt=run.negative_prompt_template).images[0]

A run directory (written by ``train.py``) holds:

    pytorch_lora_weights.safetensors   the LoRA, peft key names (``pipe.load_lora_weights(RUN)``)
    unet/ (or transformer/)            instead of the LoRA, for a full fine-tune
    learned_embeds.safetensors         location tokens of the first text encoder, ``{token: vector}``
    learned_embeds_2.safetensors       ... of the second (SDXL, SD3)
    negative_prompt.txt                the negative-prompt template, e.g. "{prompt}, watermark <loc_0_3> <loc_3_3>"
    erasure.json                       recipe, base model, versions, dataset, cells, sha256 of every file
    recipe.yaml                        the resolved recipe the run was trained with
    checkpoint-N/                      the same weight files, and the accelerator state, every few steps

This module is the one owner of those names: the trainer, the exporters, ``erasure generate``, ICR and I2P import
them from here, and the loader users call is the one the tests call.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LORA_FILE = "pytorch_lora_weights.safetensors"
EMBEDS_FILES = ("learned_embeds.safetensors", "learned_embeds_2.safetensors")
EMBEDS_FILE = EMBEDS_FILES[0]
UNET_DIR = "unet"
TRANSFORMER_DIR = "transformer"
NEGATIVE_PROMPT_FILE = "negative_prompt.txt"
METADATA_FILE = "erasure.json"
RECIPE_FILE = "recipe.yaml"
CHECKPOINT_PREFIX = "checkpoint-"
PROMPT_FIELD = "{prompt}"


@dataclass(frozen=True)
class Run:
    """What a training run knows, as read from its directory."""

    path: Path
    negative_prompt_template: str | None = None
    """negative_prompt.txt, holding ``{prompt}``; None when the run has none."""
    concepts: list[str] = field(default_factory=list)
    """the implicit concepts the run was trained to tie to location tokens."""
    cells: dict[str, list[list[int]]] = field(default_factory=dict)
    """per concept, its most frequent grid cells in the training data as ``[row, col, count]``."""
    tokens: list[str] = field(default_factory=list)
    """the learned location tokens, as the prompts spell them."""
    weights: str = "none"
    """"lora", a full fine-tune's component folder name ("unet", "transformer"), or "tokens" (tokens only)."""

    def negative_prompt(self, prompt: str) -> str | None:
        """The run's negative prompt for ``prompt`` (``str.replace``: other braces in the template stay)."""
        if self.negative_prompt_template is None:
            return None
        return fill_template(self.negative_prompt_template, prompt)


def fill_template(template: str, prompt: str) -> str:
    """``template`` with ``{prompt}`` replaced (a template without it is a plain text, returned as it is)."""
    return template.replace(PROMPT_FIELD, prompt)


def negative_prompt_template(run_dir: str | Path) -> str | None:
    """A run's negative_prompt.txt (None if it has none), checked to hold ``{prompt}``."""
    path = Path(run_dir) / NEGATIVE_PROMPT_FILE
    if not path.is_file():
        return None
    template = path.read_text(encoding="utf-8").strip()
    if PROMPT_FIELD not in template:
        raise ValueError(f"{path} must contain '{PROMPT_FIELD}' where the user's prompt goes, got {template!r}")
    return template


def _full_model_dir(run_dir: Path) -> str | None:
    for name in (UNET_DIR, TRANSFORMER_DIR):
        if (run_dir / name / "config.json").is_file():
            return name
    return None


def read_run(run_dir: str | Path) -> Run:
    """Read a run directory without loading any weights; a clear error when it is not a run."""
    from safetensors import safe_open

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    full = _full_model_dir(run_dir)
    has_lora, has_embeds = (run_dir / LORA_FILE).is_file(), (run_dir / EMBEDS_FILE).is_file()
    if not (has_lora or has_embeds or full):
        raise FileNotFoundError(
            f"{run_dir} holds none of {LORA_FILE}, {EMBEDS_FILE}, {UNET_DIR}/: is it a training run? "
            "(a run stopped early exports with `erasure export RUN --checkpoint latest`)"
        )
    tokens: list[str] = []
    if has_embeds:
        with safe_open(run_dir / EMBEDS_FILE, "pt") as handle:
            tokens = list(handle.keys())
    metadata = _metadata(run_dir)
    cells = metadata.get("negative_prompt", {}).get("frequent_cells", {})
    concepts = metadata.get("recipe", {}).get("data", {}).get("concepts", list(cells))
    weights = full or ("lora" if has_lora else "tokens")
    return Run(run_dir, negative_prompt_template(run_dir), list(concepts), dict(cells), tokens, weights)


def _metadata(run_dir: Path) -> dict[str, Any]:
    path = run_dir / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); rewrite it with `erasure export {run_dir}`") from err


def _text_encoders(pipe: Any) -> list[tuple[Any, Any]]:
    """(tokenizer, text encoder) pairs of a pipeline that take textual-inversion rows: the CLIP ones (FLUX's
    ``text_encoder_2`` is its T5, which keeps its own vocabulary)."""
    pairs = [(pipe.tokenizer, pipe.text_encoder)]
    second = getattr(pipe, "text_encoder_2", None)
    if (
        second is not None
        and getattr(pipe, "tokenizer_2", None) is not None
        and type(second).__name__.startswith("CLIP")
    ):
        pairs.append((pipe.tokenizer_2, second))
    return pairs


def _add_rows(tokenizer: Any, encoder: Any, rows: dict[str, Any]) -> None:
    """What ``load_textual_inversion`` does, for pipelines without it (SD3): new tokens with the given rows."""
    import torch

    tokenizer.add_tokens(list(rows))
    encoder.resize_token_embeddings(len(tokenizer))
    weight = encoder.get_input_embeddings().weight
    with torch.no_grad():
        weight[tokenizer.convert_tokens_to_ids(list(rows))] = torch.stack(list(rows.values())).to(weight)


def load_learned_embeds(pipe: Any, run_dir: str | Path) -> list[str]:
    """Add a run's location tokens to every text encoder of ``pipe`` through ``pipe.load_textual_inversion``.

    One file per CLIP encoder (:data:`EMBEDS_FILES` order): SDXL's and SD3's second file goes to ``text_encoder_2``;
    SD3, whose pipeline has no ``load_textual_inversion``, gets the same rows written directly. A file holds
    one row per token, which diffusers' single-file textual-inversion format cannot carry, so the rows are passed
    as tensors with their token names. Returns the tokens added.
    """
    import torch
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    tokens: list[str] = []
    for name, (tokenizer, encoder) in zip(EMBEDS_FILES, _text_encoders(pipe), strict=False):
        path = run_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: this pipeline has a text encoder for it")
        saved = load_file(path)
        width = encoder.get_input_embeddings().weight.shape[1]
        wrong = [token for token, row in saved.items() if row.shape != torch.Size([width])]
        if wrong:
            raise ValueError(
                f"{path}: token {wrong[0]} has a row of shape {tuple(saved[wrong[0]].shape)}, the text encoder "
                f"takes ({width},): the run was trained on another base model"
            )
        if hasattr(pipe, "load_textual_inversion"):
            pipe.load_textual_inversion(
                list(saved.values()), token=list(saved), tokenizer=tokenizer, text_encoder=encoder
            )
        else:
            _add_rows(tokenizer, encoder, saved)
        tokens = list(saved)
    return tokens


def adapter_name(run_dir: Path) -> str:
    """A peft adapter name for a run: its directory name, made of the characters module names allow."""
    return re.sub(r"\W", "_", run_dir.resolve().name) or "run"


def load_run(pipe: Any, run_dir: str | Path, lora_scale: float = 1.0) -> Run:
    """Put a training run into ``pipe`` (any of our pipelines, or diffusers' own); returns what the run knows.

    Loads the LoRA (as an adapter named after the run directory, weighted ``lora_scale``) or the full fine-tune's
    UNet / transformer, and the learned location tokens into every CLIP tokenizer and text encoder (both for SDXL),
    so ``<loc_3_3>`` in a prompt is one learned token, not sub-word pieces. Pass the returned
    ``run.negative_prompt_template`` as ``concept_negative_prompt``: the pipeline fills ``{prompt}`` per prompt.
    """
    run = read_run(run_dir)
    if run.weights in (UNET_DIR, TRANSFORMER_DIR):
        if lora_scale != 1.0:
            raise ValueError(f"lora_scale={lora_scale}: {run.path} is a full fine-tune, not a LoRA")
        current = getattr(pipe, run.weights, None)
        if current is None:
            raise ValueError(f"{run.path} holds a {run.weights}/ but this pipeline has no {run.weights}")
        trained = type(current).from_pretrained(run.path / run.weights, torch_dtype=current.dtype)
        setattr(pipe, run.weights, trained.to(current.device))
    elif run.weights == "lora":
        _refuse_mixed_lora_names(run.path / LORA_FILE)
        name = adapter_name(run.path)
        pipe.load_lora_weights(run.path, weight_name=LORA_FILE, adapter_name=name)
        if lora_scale != 1.0:
            pipe.set_adapters([name], adapter_weights=[lora_scale])
    if run.tokens:
        load_learned_embeds(pipe, run.path)
    return run


def _refuse_mixed_lora_names(lora_file: Path) -> None:
    """A UNet LoRA beyond attention trained before 2026-12-07 was written with diffusers' old names for attention
    (``to_q.lora.down``) and peft's for the other layers (``conv1.lora_A``); ``load_lora_weights`` then drops the
    attention LoRA without a word, so such a file is refused, with the command that renames it."""
    from safetensors import safe_open

    with safe_open(lora_file, "pt") as handle:
        keys = list(handle.keys())
    if any(".lora.down." in k for k in keys) and any(".lora_A." in k for k in keys):
        raise ValueError(
            f"{lora_file} mixes diffusers' old LoRA names (lora.down / lora.up) with peft's (lora_A / lora_B): "
            "diffusers would drop its attention weights. Rewrite it with peft's names: python -c \"import sys; "
            'from erasure.runs import rename_lora_keys; rename_lora_keys(sys.argv[1])" ' + str(lora_file)
        )


def rename_lora_keys(lora_file: str | Path) -> None:
    """Rewrite a UNet LoRA file in peft's key names, keeping its metadata (the adapter config with alpha)."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(lora_file, "pt") as handle:
        metadata = handle.metadata()
    state = {k.removeprefix("unet."): v for k, v in load_file(lora_file).items()}
    renamed = {f"unet.{k}": v for k, v in convert_unet_state_dict_to_peft(state).items()}
    save_file(renamed, lora_file, metadata=metadata)


def checkpoint_step(path: Path) -> int:
    """The step of a ``checkpoint-N`` directory."""
    return int(path.name.removeprefix(CHECKPOINT_PREFIX))


def _numbered_checkpoints(run_dir: Path) -> list[Path]:
    found = [
        p for p in Path(run_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.name.removeprefix(CHECKPOINT_PREFIX).isdigit()
    ]
    return sorted(found, key=checkpoint_step)


def _is_complete(checkpoint: Path) -> bool:
    """Whether a checkpoint's save finished: it holds weights, and every safetensors file in it reads whole.

    The trainer saves under a temporary name and renames, so this only catches what that cannot: a checkpoint cut
    short by an older trainer, a full disk, or a copy that stopped halfway.
    """
    from safetensors import SafetensorError, safe_open

    files = list(checkpoint.rglob("*.safetensors"))
    try:
        for path in files:
            with safe_open(path, "pt"):
                pass
    except (OSError, SafetensorError):
        return False
    return bool(files)


def checkpoints(run_dir: Path) -> list[Path]:
    """A run's complete checkpoint directories, oldest first (what resuming and pruning may pick from)."""
    return [path for path in _numbered_checkpoints(run_dir) if _is_complete(path)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None; newer incomplete ones are skipped with a warning."""
    for path in reversed(_numbered_checkpoints(run_dir)):
        if _is_complete(path):
            return path
        logging.getLogger(__name__).warning("skipping %s: its save did not finish (a missing or cut-off file)", path)
    return None
