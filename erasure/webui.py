"""A run's location tokens for AUTOMATIC1111 WebUI and ComfyUI: one embedding file per token, and the negative prompt
spelled the way each UI reads it.

    erasure export outputs/RUN --format webui
    RUN/webui/embeddings/NAME-loc_3_3.safetensors   copy into WebUI's embeddings/ or ComfyUI's models/embeddings/
    RUN/webui/negative_prompt_webui.txt             {prompt}, watermark NAME-loc_2_3 NAME-loc_3_3
    RUN/webui/negative_prompt_comfyui.txt           {prompt}, watermark embedding:NAME-loc_2_3 embedding:NAME-loc_3_3

Why these names, as the loaders' source has it (WebUI: ``modules/textual_inversion/textual_inversion.py``,
``EmbeddingDatabase.load_from_file`` and ``create_embedding_from_data``, ``modules/sd_hijack_clip.py``; ComfyUI:
``comfy/sd1_clip.py``, ``load_embed`` and ``SDTokenizer.tokenize_with_weights``):

- Both UIs name an embedding by its file name without the extension. ``<loc_3_3>.safetensors`` cannot exist on
  Windows (``<`` and ``>`` are reserved there), so a file is named ``NAME-loc_3_3``: the recipe name and the cell,
  in characters every file system and both prompt parsers take as one word. The recipe name keeps two runs apart in
  one embeddings folder, where WebUI keeps one embedding per name.
- WebUI replaces an embedding wherever the CLIP tokens of its name occur in the prompt, so its text is the run's
  template with each location token replaced by the file name. ComfyUI reads only words that start with
  ``embedding:``, hence a second text.
- File contents: WebUI takes a file holding one tensor ``[vectors, width]`` or, for SDXL, ``clip_l`` and ``clip_g``
  (its CLIP ViT-L and OpenCLIP bigG encoders); ComfyUI takes its encoder's key, else the first tensor. So SD 1.x files
  hold ``{"emb_params": [1, width]}`` and SDXL files ``{"clip_l": [1, 768], "clip_g": [1, 1280]}``, which diffusers'
  ``load_textual_inversion`` also reads (SDXL: one key per text encoder).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from erasure.runs import EMBEDS_FILES, negative_prompt_template

WEBUI_DIR = Path("webui")
EMBEDDINGS_DIR = WEBUI_DIR / "embeddings"
WEBUI_PROMPT_FILE = WEBUI_DIR / "negative_prompt_webui.txt"
COMFYUI_PROMPT_FILE = WEBUI_DIR / "negative_prompt_comfyui.txt"
COMFYUI_PREFIX = "embedding:"
SD1_KEY = "emb_params"
SDXL_KEYS = ("clip_l", "clip_g")  # text_encoder, text_encoder_2: the order of EMBEDS_FILES


def embedding_name(run_name: str, token: str) -> str:
    """``<loc_3_3>`` of run ``toy`` → ``toy-loc_3_3``: a file name on every system, one word in every prompt parser."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{run_name}-{token.strip('<>')}")


def embedding_tensors(run_dir: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """Per location token, the tensors of its WebUI file: one row per text encoder, under the key the UIs read.

    Empty for a run without learned tokens (a naive run).
    """
    run_dir = Path(run_dir)
    saved = [load_file(run_dir / name) for name in EMBEDS_FILES if (run_dir / name).is_file()]
    if not saved:
        return {}
    keys = (SD1_KEY,) if len(saved) == 1 else SDXL_KEYS
    return {token: {key: rows[token][None] for key, rows in zip(keys, saved, strict=True)} for token in saved[0]}


def write_webui_files(run_dir: str | Path, run_name: str) -> list[Path]:
    """Write the embedding files and both negative-prompt texts under ``RUN/webui/``; returns the paths written."""
    run_dir = Path(run_dir)
    (run_dir / EMBEDDINGS_DIR).mkdir(parents=True, exist_ok=True)
    names, paths = {}, []
    for token, tensors in embedding_tensors(run_dir).items():
        names[token] = embedding_name(run_name, token)
        paths.append(run_dir / EMBEDDINGS_DIR / f"{names[token]}.safetensors")
        save_file(tensors, paths[-1], metadata={"token": token})
    template = negative_prompt_template(run_dir)
    if template is not None:
        for file, prefix in ((WEBUI_PROMPT_FILE, ""), (COMFYUI_PROMPT_FILE, COMFYUI_PREFIX)):
            text = template
            for token, name in names.items():
                text = text.replace(token, prefix + name)
            (run_dir / file).write_text(text + "\n", encoding="utf-8")
            paths.append(run_dir / file)
    return paths
