"""Location tokens as new tokenizer entries whose embedding rows alone are trained (textual-inversion style).

Only the new rows may change: a gradient hook zeroes the gradient of every other row, and the token parameter
group has no weight decay, so AdamW leaves the original vocabulary bit-identical.
The rows are saved as ``{token: vector}`` safetensors (``learned_embeds.safetensors``, and
``learned_embeds_2.safetensors`` for SDXL's second encoder, as diffusers' SDXL textual-inversion example does).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from erasure.runs import EMBEDS_FILES


def add_location_tokens(tokenizer, text_encoder, tokens: list[str]) -> list[int]:
    """Add ``tokens`` to the tokenizer and grow the encoder's embedding table; new rows start at the mean row.

    The mean embedding is a neutral start: a new token begins as "some word" and moves towards the place it marks.
    """
    added = tokenizer.add_tokens(tokens)
    if added != len(tokens):
        raise ValueError(f"{added} of {len(tokens)} location tokens were new: the tokenizer already has some of them")
    embeddings = text_encoder.get_input_embeddings()
    mean_row = embeddings.weight.detach().mean(dim=0)
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    with torch.no_grad():
        text_encoder.get_input_embeddings().weight[ids] = mean_row
    return ids


def train_only_rows(text_encoder, ids: list[int]) -> torch.nn.Parameter:
    """Freeze the encoder except the embedding rows ``ids``; returns the embedding table to optimise."""
    text_encoder.requires_grad_(False)
    weight = text_encoder.get_input_embeddings().weight
    weight.requires_grad_(True)
    trainable = torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)
    trainable[ids] = 1
    # The mask follows the gradient: the encoder is often moved to the GPU after this (accelerator.prepare).
    weight.register_hook(lambda grad: grad * trainable.to(grad.device, grad.dtype))
    return weight


def token_embeddings(tokenizer, text_encoder, tokens: list[str]) -> dict[str, torch.Tensor]:
    weight = text_encoder.get_input_embeddings().weight.detach()
    ids = tokenizer.convert_tokens_to_ids(tokens)
    return {token: weight[i].float().cpu().contiguous() for token, i in zip(tokens, ids, strict=True)}


def save_embeddings(out_dir: Path, tokens: list[str], tokenizers: list, text_encoders: list) -> list[Path]:
    """One ``{token: vector}`` file per text encoder, in :data:`EMBEDS_FILES` order."""
    paths = []
    for name, tokenizer, encoder in zip(EMBEDS_FILES, tokenizers, text_encoders, strict=False):
        save_file(token_embeddings(tokenizer, encoder, tokens), out_dir / name)
        paths.append(out_dir / name)
    return paths


def restore_embeddings(in_dir: Path, tokenizers: list, text_encoders: list) -> None:
    """Write saved rows back into encoders that already hold the tokens (resuming from a checkpoint)."""
    for name, tokenizer, encoder in zip(EMBEDS_FILES, tokenizers, text_encoders, strict=False):
        saved = load_file(in_dir / name)
        weight = encoder.get_input_embeddings().weight
        ids = tokenizer.convert_tokens_to_ids(list(saved))
        with torch.no_grad():
            weight[ids] = torch.stack(list(saved.values())).to(weight.device, weight.dtype)
