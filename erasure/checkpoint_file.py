"""A diffusers SD 1.x or SDXL pipeline as ONE ``.safetensors`` file in the original Stable Diffusion layout.

    from erasure.checkpoint_file import save_single_file
    save_single_file(pipe, "model.safetensors")
    pipe = StableDiffusionPipeline.from_single_file("model.safetensors", config="path/to/diffusers-folder")

WebUI (A1111), ComfyUI and diffusers' ``from_single_file`` load checkpoints in the layout the original CompVis (SD 1.x)
and Stability (SDXL) code saved: one file, a prefix per component, and the original module names inside it.

    prefix                                  component           names inside
    model.diffusion_model.                  UNet                input_blocks.N.M / middle_block.N / output_blocks.N.M
    first_stage_model.                      VAE                 encoder.down.N.block.M, mid.attn_1.q (1x1 convs), ...
    cond_stage_model.transformer.           SD 1.x CLIP ViT-L   transformers' CLIPTextModel names (text_model.*)
    conditioner.embedders.0.transformer.    SDXL CLIP ViT-L     the same
    conditioner.embedders.1.model.          SDXL OpenCLIP bigG  open_clip names (resblocks.N.attn.in_proj_weight, ...)

diffusers only reads this layout (``diffusers.loaders.single_file_utils``); this module writes it. The UNet's
numbering comes from the model's own config: ``input_blocks.0`` is ``conv_in``, then each down block takes
``layers_per_block`` entries plus one for its downsampler, and each up block ``layers_per_block + 1`` entries, so a
small model such as ``assets/toy-sd`` (3 blocks, 1 layer each) maps as SD 1.5 (4 blocks, 2 layers) does.

A single file holds weights only: the tokenizer, the scheduler and config values such as the VAE's ``scaling_factor``
come from the loader (WebUI and ComfyUI: the family's defaults; diffusers: ``config=``, a diffusers folder).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SDXL_TEXT_PREFIXES = ("conditioner.embedders.0.transformer.", "conditioner.embedders.1.model.")

# diffusers name -> original name, for modules outside the numbered blocks
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "class_embedding.linear_1": "label_emb.0.0",
    "class_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _rename_head(rest: list[str], names: dict[str, str]) -> str:
    """``rest`` joined, its leading module renamed by ``names`` (one- or two-part names, e.g. ``to_out.0``)."""
    for size in (2, 1):
        head = ".".join(rest[:size])
        if head in names:
            return ".".join([names[head], *rest[size:]])
    return ".".join(rest)


def unet_original_name(name: str, config: dict[str, Any]) -> str:
    """A diffusers UNet2DConditionModel parameter or module name → its original name, e.g.
    ``down_blocks.1.attentions.0.proj_in`` → ``input_blocks.4.1.proj_in`` (SD 1.5)."""
    per_block = config["layers_per_block"]
    if not isinstance(per_block, int):
        raise ValueError(f"layers_per_block={per_block}: the original layout has one count for every block")
    step = per_block + 1
    for diffusers, original in _UNET_TOP.items():
        if name == diffusers or name.startswith(diffusers + "."):
            return original + name[len(diffusers) :]
    parts = name.split(".")
    if parts[0] not in ("down_blocks", "mid_block", "up_blocks"):
        raise ValueError(f"UNet parameter {name} has no place in the original layout")
    kind = parts[1] if parts[0] == "mid_block" else parts[2]
    if parts[0] == "down_blocks" and kind == "downsamplers":  # downsamplers.0.conv -> input_blocks.N.0.op
        return ".".join([f"input_blocks.{(int(parts[1]) + 1) * step}.0.op", *parts[5:]])
    if parts[0] == "up_blocks" and kind == "upsamplers":  # after the block's last layer, behind its attention if any
        block = int(parts[1])
        after = 2 if "Attn" in config["up_block_types"][block] else 1
        return ".".join([f"output_blocks.{block * step + per_block}.{after}", *parts[4:]])
    if kind not in ("resnets", "attentions"):
        raise ValueError(f"UNet parameter {name} has no place in the original layout")
    inner = 0 if kind == "resnets" else 1
    if parts[0] == "down_blocks":
        head, rest = f"input_blocks.{1 + int(parts[1]) * step + int(parts[3])}.{inner}", parts[4:]
    elif parts[0] == "up_blocks":
        head, rest = f"output_blocks.{int(parts[1]) * step + int(parts[3])}.{inner}", parts[4:]
    else:  # mid_block: resnet, attention, resnet
        head, rest = f"middle_block.{2 * int(parts[2]) if kind == 'resnets' else 1}", parts[3:]
    return ".".join([head, _rename_head(rest, _UNET_RESNET) if kind == "resnets" else ".".join(rest)])


def vae_original_name(name: str, config: dict[str, Any]) -> str:
    """A diffusers AutoencoderKL parameter name → its original name (the decoder's ``up.0`` is its last block)."""
    parts = name.split(".")
    if parts[0] not in ("encoder", "decoder"):
        return name  # quant_conv, post_quant_conv
    side, module, rest = parts[0], parts[1], parts[2:]
    if module == "conv_norm_out":
        return ".".join([side, "norm_out", *rest])
    if module == "mid_block":  # resnets.0 / attentions.0 / resnets.1
        if rest[0] == "attentions":
            return ".".join([side, "mid.attn_1", _rename_head(rest[2:], _VAE_ATTENTION)])
        return ".".join([side, f"mid.block_{int(rest[1]) + 1}", _rename_head(rest[2:], _VAE_RESNET)])
    if module in ("down_blocks", "up_blocks"):
        block = int(rest[0]) if module == "down_blocks" else len(config["up_block_types"]) - 1 - int(rest[0])
        stage = f"{'down' if module == 'down_blocks' else 'up'}.{block}"
        if rest[1] == "resnets":
            return ".".join([side, stage, "block", rest[2], _rename_head(rest[3:], _VAE_RESNET)])
        sampler = "downsample" if rest[1] == "downsamplers" else "upsample"  # downsamplers.0.conv -> downsample.conv
        return ".".join([side, stage, sampler, *rest[3:]])
    return name  # conv_in, conv_out


def _vae_state_dict(vae: Any) -> dict[str, torch.Tensor]:
    out = {}
    for name, value in vae.state_dict().items():
        original = vae_original_name(name, vae.config)
        if ".mid.attn_1." in original and value.ndim == 2:  # the original attention projections are 1x1 convolutions
            value = value[:, :, None, None]
        out[VAE_PREFIX + original] = value
    return out


def _clip_state_dict(text_encoder: Any, prefix: str) -> dict[str, torch.Tensor]:
    """transformers' CLIP text model under its original prefix, keeping the ``text_model.`` level old versions had."""
    return {f"{prefix}text_model.{k.removeprefix('text_model.')}": v for k, v in text_encoder.state_dict().items()}


def _open_clip_state_dict(text_encoder: Any, prefix: str) -> dict[str, torch.Tensor]:
    """transformers' CLIPTextModelWithProjection → open_clip names: q, k, v in one ``in_proj``, the projection
    transposed."""
    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    out = {}
    for key, value in state.items():
        if key == "text_projection.weight":  # open_clip multiplies x @ projection
            out["text_projection"] = value.T
            continue
        if key in _OPEN_CLIP:
            out[_OPEN_CLIP[key]] = value
            continue
        match = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if match is None:
            raise ValueError(f"text_encoder_2 parameter {key} has no place in the open_clip layout")
        layer, module, param = match.groups()
        block = f"transformer.resblocks.{layer}"
        if module == "self_attn.q_proj":
            qkv = [state[f"encoder.layers.{layer}.self_attn.{p}_proj.{param}"] for p in "qkv"]
            out[f"{block}.attn.in_proj_{param}"] = torch.cat(qkv)
        elif module not in ("self_attn.k_proj", "self_attn.v_proj"):
            out[f"{block}.{_OPEN_CLIP_LAYER[module]}.{param}"] = value
    return {prefix + k: v for k, v in out.items()}


def original_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """Every weight of an SD 1.x or SDXL pipeline under its original name."""
    if getattr(pipe, "unet", None) is None:
        raise ValueError(f"{type(pipe).__name__} has no UNet: single files are written for SD 1.x and SDXL only")
    out = {UNET_PREFIX + unet_original_name(k, pipe.unet.config): v for k, v in pipe.unet.state_dict().items()}
    out |= _vae_state_dict(pipe.vae)
    if getattr(pipe, "text_encoder_2", None) is None:
        if pipe.text_encoder.config.hidden_size == 1024:
            raise ValueError("SD 2.x (OpenCLIP ViT-H text encoder) is not written: single files are SD 1.x and SDXL")
        return out | _clip_state_dict(pipe.text_encoder, SD1_TEXT_PREFIX)
    out |= _clip_state_dict(pipe.text_encoder, SDXL_TEXT_PREFIXES[0])
    return out | _open_clip_state_dict(pipe.text_encoder_2, SDXL_TEXT_PREFIXES[1])


def save_single_file(pipe: Any, path: str | Path) -> Path:
    """Write ``pipe``'s UNet, VAE and text encoders as one original-layout ``.safetensors`` file."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a single-file checkpoint is written as .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in original_state_dict(pipe).items()}
    save_file(tensors, path, metadata={"format": "pt"})
    return path
