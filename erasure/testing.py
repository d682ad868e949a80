"""Offline model builders for tests, benchmarks and the toy world: no download, seeded, ``save_pretrained``-able.

    from erasure.testing import save_tiny_sd
    path = save_tiny_sd(tmp_path / "tiny-sd")
    pipe = StableDiffusionPipeline.from_pretrained(path)       # likewise save_tiny_sd3 / save_tiny_flux

Shapes follow diffusers' own pipeline tests (``block_out_channels=(32, 64)``, ``cross_attention_dim=32``);
:func:`sd15_shaped_components` has Stable Diffusion 1.5's real shapes with random weights, which time exactly
like the real model because compute does not depend on the weights.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

WORDS_FILE = Path(__file__).parent / "assets" / "tiny_words.txt"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORD_START = "\u2581"  # SentencePiece's marker of a word's first piece, as T5 writes it
# The UNet shape both tiny pipelines share (diffusers' own pipeline tests use the same): 16 px latents.
TINY_UNET = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "norm_num_groups": 32,
}


@lru_cache(maxsize=1)
def _byte_symbols() -> tuple[str, ...]:
    """CLIP's byte-to-unicode table: the 256 printable symbols its BPE works on."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    symbols, extra = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return tuple(symbols)


def read_words(path: Path = WORDS_FILE) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _bpe(parts: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply merges by rank until none fits: the segmentation a BPE tokenizer with ``ranks`` produces."""
    while len(parts) > 1:
        pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(parts[:-1], parts[1:], strict=True))]
        rank, i = min(pairs)
        if rank == len(ranks):
            break
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]
    return parts


def build_clip_tokenizer(words: Iterable[str], out_dir: str | Path, model_max_length: int = 77) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single bytes plus merges that make each of ``words`` one token.

    Every string stays encodable (it falls back to characters), so the tokenizer is complete; the word list
    only decides which words are single tokens, as a trained BPE would for a small caption vocabulary.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    symbols = list(_byte_symbols())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    ranks: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(w.lower() for w in words):
        # Segment the word with the merges made so far (as BPE will), then join what is left, left to right.
        parts = _bpe(list(word[:-1]) + [word[-1] + "</w>"], ranks)
        current = parts[0]
        for nxt in parts[1:]:
            ranks.setdefault((current, nxt), len(ranks))
            current = current + nxt
            vocab_list.append(current)
    vocab_list += [BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in ranks) + "\n"
    (out_dir / "merges.txt").write_text(merges_text, encoding="utf-8")
    tokenizer = CLIPTokenizer(
        vocab=str(out_dir / "vocab.json"), merges=str(out_dir / "merges.txt"), model_max_length=model_max_length
    )
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def tiny_tokenizer() -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        return build_clip_tokenizer(read_words(), tmp)


def _text_config(tokenizer: CLIPTokenizer, hidden_size: int = 32, projection_dim: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_size=hidden_size,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=len(tokenizer),
        projection_dim=projection_dim,
        hidden_act="gelu",
    )


def tiny_vae(sample_size: int = 32, **config) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        sample_size=sample_size,
        **config,
    )


def tiny_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
    )


def tiny_sd_components(seed: int = 0, prediction_type: str = "epsilon") -> dict:
    """UNet, VAE, CLIP text encoder, tokenizer and scheduler of a tiny SD 1.x; 32 px images, 16 px latents."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET, cross_attention_dim=32)
    torch.manual_seed(seed)
    vae = tiny_vae()
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": tiny_scheduler(prediction_type),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def tiny_sd_pipeline(seed: int = 0, prediction_type: str = "epsilon") -> StableDiffusionPipeline:
    return StableDiffusionPipeline(**tiny_sd_components(seed, prediction_type), requires_safety_checker=False)


def save_tiny_sd(out_dir: str | Path, seed: int = 0, prediction_type: str = "epsilon") -> Path:
    """Write a tiny SD 1.x pipeline that ``StableDiffusionPipeline.from_pretrained(out_dir)`` loads offline."""
    tiny_sd_pipeline(seed, prediction_type).save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def tiny_sdxl_components(seed: int = 0) -> dict:
    """A tiny SDXL: two text encoders (the second with projection), micro-conditioning time embeddings."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        **TINY_UNET,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 time ids x 8 + pooled text embedding of 32
        cross_attention_dim=64,  # the two encoders' hidden states side by side
    )
    torch.manual_seed(seed)
    vae = tiny_vae()
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer))
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tiny_tokenizer(),
        "scheduler": tiny_scheduler(),
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    return StableDiffusionXLPipeline(**tiny_sdxl_components(seed))


def save_tiny_sdxl(out_dir: str | Path, seed: int = 0) -> Path:
    tiny_sdxl_pipeline(seed).save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def build_t5_tokenizer(words: Iterable[str], model_max_length: int = 512) -> T5TokenizerFast:
    """A T5 Unigram tokenizer: each of ``words`` one piece, anything else spelled by characters (or ``<unk>``).

    T5's layout: ``<pad>`` = 0, ``</s>`` = 1 (appended to every text), ``<unk>`` = 2; no sentinel tokens.
    """
    specials = ["<pad>", "</s>", "<unk>"]
    characters = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789,.:;!?'-_<>{}()"))
    pieces = [(token, 0.0) for token in specials] + [
        (WORD_START + word.lower(), -1.0) for word in dict.fromkeys(words)
    ]
    pieces += [(WORD_START, -2.0)] + [(character, -5.0) for character in characters]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=tokenizer, extra_ids=0, model_max_length=model_max_length)


def tiny_t5(tokenizer: T5TokenizerFast, d_model: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return T5EncoderModel(config).eval()  # as from_pretrained gives it: T5's dropout off


def tiny_flow_scheduler(**config) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=3.0, **config)


def tiny_sd3_components(seed: int = 0, t5: bool = True, dual_attention_layers: tuple[int, ...] = ()) -> dict:
    """A tiny SD3: MMDiT on 16 px latents, two CLIP encoders (pooled 32 + 32) and a T5 whose width (64) is the
    joint attention width, as SD3 pads the CLIP states to the T5's; ``t5=False`` leaves T5 out, as users run SD3 in
    less memory (the pipeline then reads zero rows in its place); ``dual_attention_layers`` gives those blocks SD3.5
    Medium's second, image-only attention (MMDiT-X)."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        pos_embed_max_size=16,
        dual_attention_layers=dual_attention_layers,
    )
    torch.manual_seed(seed)
    vae = tiny_vae(shift_factor=0.0609, scaling_factor=1.5035)  # SD3's own latent normalisation
    tokenizer, t5_tokenizer = tiny_tokenizer(), build_t5_tokenizer(read_words(), model_max_length=256)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModelWithProjection(_text_config(tokenizer))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(tokenizer))
    torch.manual_seed(seed)
    text_encoder_3 = tiny_t5(t5_tokenizer, d_model=64)
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "text_encoder_3": text_encoder_3 if t5 else None,
        "tokenizer": tokenizer,
        "tokenizer_2": tiny_tokenizer(),
        "tokenizer_3": t5_tokenizer if t5 else None,
        "scheduler": tiny_flow_scheduler(),
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_sd3_pipeline(
    seed: int = 0, t5: bool = True, dual_attention_layers: tuple[int, ...] = ()
) -> StableDiffusion3Pipeline:
    return StableDiffusion3Pipeline(**tiny_sd3_components(seed, t5, dual_attention_layers))


def save_tiny_sd3(
    out_dir: str | Path, seed: int = 0, t5: bool = True, dual_attention_layers: tuple[int, ...] = ()
) -> Path:
    """Write a tiny SD3 pipeline that ``StableDiffusion3Pipeline.from_pretrained(out_dir)`` loads offline (without
    T5: ``from_pretrained(out_dir, text_encoder_3=None, tokenizer_3=None)``, or ``erasure.load_pipeline``)."""
    tiny_sd3_pipeline(seed, t5, dual_attention_layers).save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def tiny_flux_components(seed: int = 0, guidance_embeds: bool = True) -> dict:
    """A tiny FLUX.1: 16 px latents packed into 2 x 2 patches (16 channels), a CLIP encoder for the pooled embedding
    and a T5 for the sequence; ``guidance_embeds`` as FLUX.1-dev (distilled) or not (schnell-like)."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 4, 8),
    )
    torch.manual_seed(seed)
    vae = tiny_vae(shift_factor=0.1159, scaling_factor=0.3611)  # FLUX's own latent normalisation
    tokenizer, t5_tokenizer = tiny_tokenizer(), build_t5_tokenizer(read_words())
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(tokenizer))
    torch.manual_seed(seed)
    text_encoder_2 = tiny_t5(t5_tokenizer, d_model=32)
    return {
        "transformer": transformer,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": t5_tokenizer,
        "scheduler": tiny_flow_scheduler(use_dynamic_shifting=True),
        "image_encoder": None,
        "feature_extractor": None,
    }


def tiny_flux_pipeline(seed: int = 0, guidance_embeds: bool = True) -> FluxPipeline:
    return FluxPipeline(**tiny_flux_components(seed, guidance_embeds))


def save_tiny_flux(out_dir: str | Path, seed: int = 0, guidance_embeds: bool = True) -> Path:
    """Write a tiny FLUX.1 pipeline that ``FluxPipeline.from_pretrained(out_dir)`` loads offline."""
    tiny_flux_pipeline(seed, guidance_embeds).save_pretrained(out_dir, safe_serialization=True)
    return Path(out_dir)


def sd15_shaped_components(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """Random-init components with Stable Diffusion 1.5's exact configs (860M UNet, 77-token CLIP ViT-L text).

    For speed and memory benchmarks only: the weights are noise, so images are meaningless, but every
    kernel runs at the real model's shape.
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64,
        cross_attention_dim=768,
        attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
    ).to(dtype)
    vae = _sd_vae(sample_size=512, scaling_factor=0.18215, dtype=dtype)
    tokenizer = tiny_tokenizer()
    text_encoder = _real_depth_clip(tokenizer, width=768, layers=12, heads=12, projection=False, dtype=dtype)
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": _sd_scheduler(),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def sdxl_shaped_components(seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """Random-init components with SDXL 1.0's configs: the 2.6B UNet, the VAE, CLIP ViT-L and OpenCLIP bigG text
    encoders at their widths and depths (a Geom-Erasing step runs both, for the learned token rows' gradients).

    For speed and memory benchmarks only, like :func:`sd15_shaped_components`.
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        cross_attention_dim=2048,  # 768 + 1280: the two encoders' hidden states side by side
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,  # 6 time ids x 256 + the pooled 1280
    ).to(dtype)
    vae = _sd_vae(sample_size=1024, scaling_factor=0.13025, dtype=dtype)
    tokenizer = tiny_tokenizer()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": _real_depth_clip(tokenizer, width=768, layers=12, heads=12, projection=False, dtype=dtype),
        "text_encoder_2": _real_depth_clip(tokenizer, width=1280, layers=32, heads=20, projection=True, dtype=dtype),
        "tokenizer": tokenizer,
        "tokenizer_2": tiny_tokenizer(),
        "scheduler": _sd_scheduler(),
        "image_encoder": None,
        "feature_extractor": None,
    }


def _sd_vae(sample_size: int, scaling_factor: float, dtype: torch.dtype) -> AutoencoderKL:
    """The Stable Diffusion VAE's architecture (SD 1.x and SDXL share it; only the latent scaling differs)."""
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        sample_size=sample_size,
        layers_per_block=2,
        scaling_factor=scaling_factor,
    ).to(dtype)


def _sd_scheduler() -> DDIMScheduler:
    """DDIM with the beta schedule SD 1.x and SDXL were trained on."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _real_depth_clip(
    tokenizer: CLIPTokenizer, width: int, layers: int, heads: int, projection: bool, dtype: torch.dtype
) -> CLIPTextModel:
    """A CLIP text encoder at a real one's width, depth and heads (the vocabulary is the tiny tokenizer's)."""
    config = _text_config(tokenizer, hidden_size=width, projection_dim=width)
    config.num_hidden_layers, config.intermediate_size, config.num_attention_heads = layers, 4 * width, heads
    config.hidden_act = "quick_gelu"
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).to(dtype)


def _shallow_clip(tokenizer: CLIPTokenizer, width: int, projection: bool, dtype: torch.dtype) -> CLIPTextModel:
    """One CLIP layer at a real encoder's width: the states the denoiser reads have their real shape, while the
    encoder's own cost (once per call, not per step) is left out of a denoising benchmark."""
    config = _text_config(tokenizer, hidden_size=width, projection_dim=width)
    config.num_hidden_layers, config.intermediate_size, config.num_attention_heads = 1, width, 8
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).to(dtype)


def _shallow_t5(width: int, dtype: torch.dtype, max_length: int) -> tuple[T5TokenizerFast, T5EncoderModel]:
    tokenizer = build_t5_tokenizer(read_words(), model_max_length=max_length)
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=width,
        d_kv=64,
        d_ff=width,
        num_layers=1,
        num_heads=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return tokenizer, T5EncoderModel(config).eval().to(dtype)


def _sixteen_channel_vae(dtype: torch.dtype, **config) -> AutoencoderKL:
    """SD3's and FLUX's VAE shape: SD's four blocks with 16 latent channels."""
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=16,
        sample_size=1024,
        layers_per_block=2,
        use_quant_conv=False,
        use_post_quant_conv=False,
        **config,
    ).to(dtype)


def sd35_medium_shaped_components(num_layers: int = 24, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """Random-init components of SD3.5 medium's shape for speed benchmarks: its MMDiT-X transformer (width 1536,
    dual attention in the first 13 blocks, RMS q/k norm) cut to ``num_layers`` blocks (its cost is linear in
    them), the 16-channel VAE, and one-layer text encoders of CLIP-L's, CLIP-G's and T5-XXL's widths."""
    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=num_layers,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        pos_embed_max_size=384,
        dual_attention_layers=tuple(range(min(13, num_layers))),
        qk_norm="rms_norm",
    ).to(dtype)
    tokenizer = tiny_tokenizer()
    t5_tokenizer, t5 = _shallow_t5(4096, dtype, max_length=256)
    return {
        "transformer": transformer,
        "vae": _sixteen_channel_vae(dtype, scaling_factor=1.5305, shift_factor=0.0609),
        "text_encoder": _shallow_clip(tokenizer, 768, True, dtype),
        "text_encoder_2": _shallow_clip(tokenizer, 1280, True, dtype),
        "text_encoder_3": t5,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer,
        "tokenizer_3": t5_tokenizer,
        "scheduler": tiny_flow_scheduler(),
        "image_encoder": None,
        "feature_extractor": None,
    }


def flux_dev_shaped_components(
    num_layers: int = 19, num_single_layers: int = 38, seed: int = 0, dtype: torch.dtype = torch.float32
) -> dict:
    """Random-init components of FLUX.1-dev's shape for speed benchmarks: its transformer (width 3072, guidance
    embedding) cut to ``num_layers`` double and ``num_single_layers`` single blocks, the 16-channel VAE, one-layer
    text encoders of CLIP-L's and T5-XXL's widths."""
    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=128,
        num_attention_heads=24,
        joint_attention_dim=4096,
        pooled_projection_dim=768,
        guidance_embeds=True,
        axes_dims_rope=(16, 56, 56),
    ).to(dtype)
    tokenizer = tiny_tokenizer()
    t5_tokenizer, t5 = _shallow_t5(4096, dtype, max_length=512)
    return {
        "transformer": transformer,
        "vae": _sixteen_channel_vae(dtype, scaling_factor=0.3611, shift_factor=0.1159),
        "text_encoder": _shallow_clip(tokenizer, 768, False, dtype),
        "text_encoder_2": t5,
        "tokenizer": tokenizer,
        "tokenizer_2": t5_tokenizer,
        "scheduler": tiny_flow_scheduler(use_dynamic_shifting=True),
        "image_encoder": None,
        "feature_extractor": None,
    }
