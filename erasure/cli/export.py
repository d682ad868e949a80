"""Write a training run's user-facing files again: negative prompt, erasure.json and, on request, WebUI/ComfyUI files.

examples:
  erasure export outputs/toy_geom_erasing_watermark                        # refresh files and hashes
  erasure export outputs/toy_geom_erasing_watermark --format kohya         # + NAME.safetensors, the kohya LoRA
  erasure export outputs/toy_geom_erasing_watermark --format webui         # + the tokens as embeddings, webui/
  erasure export outputs/toy_geom_erasing_watermark --format single-file   # + one merged checkpoint, webui/
  erasure export outputs/RUN --checkpoint latest                           # a run stopped before its last step

--format webui writes the kohya LoRA (load it with <lora:NAME:1> in the prompt), one embedding per location token
in RUN/webui/embeddings/ (copy them into the UI's embeddings folder) and the run's negative prompt as WebUI
(negative_prompt_webui.txt) and ComfyUI (negative_prompt_comfyui.txt) read it. --format single-file writes the base
model with the LoRA fused in (or the fine-tuned UNet) as one .safetensors checkpoint in the original Stable Diffusion
layout (default RUN/webui/NAME-merged.safetensors); a checkpoint cannot hold the learned tokens, so the same
embeddings go beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

FORMATS = ("diffusers", "kohya", "webui", "single-file")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory written by train.py")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="diffusers",
        help="kohya: + a WebUI/ComfyUI LoRA file; webui: + that LoRA and the tokens as embeddings; "
        "single-file: + one merged checkpoint and the embeddings",
    )
    parser.add_argument("--out", type=Path, metavar="FILE", help="--format single-file: where the checkpoint goes")
    parser.add_argument("--checkpoint", help="'latest' or a checkpoint directory to export the weights of")


def run(args: argparse.Namespace) -> int:
    from erasure.training.export import default_single_file, export_run
    from erasure.webui import COMFYUI_PROMPT_FILE, EMBEDDINGS_DIR, WEBUI_PROMPT_FILE

    if args.out is not None and args.format != "single-file":
        raise ValueError("--out is the path of a --format single-file checkpoint")
    single_file = None
    if args.format == "single-file":
        single_file = args.out or default_single_file(args.run_dir)
    metadata = export_run(
        args.run_dir,
        checkpoint=args.checkpoint,
        kohya=args.format == "kohya",
        webui=args.format == "webui",
        single_file=single_file,
    )
    for name, digest in metadata["files"].items():
        print(f"{digest[:12]}  {name}")
    print(f"negative prompt: {metadata['negative_prompt']['template']}")
    if args.format in ("webui", "single-file"):
        embeddings = args.run_dir / EMBEDDINGS_DIR
        if single_file is not None:
            print(f"checkpoint: {single_file} (the learned tokens cannot live in it: load the embeddings too)")
        print(f"embeddings: copy {embeddings}/* into WebUI's embeddings/ or ComfyUI's models/embeddings/")
        print(f"negative prompt for WebUI: {args.run_dir / WEBUI_PROMPT_FILE}")
        print(f"negative prompt for ComfyUI: {args.run_dir / COMFYUI_PROMPT_FILE}")
    return 0
