"""Write a training run's user-facing files again: negative prompt, erasure.json and, on request, a kohya LoRA.

examples:
  erasure export outputs/toy_geom_erasing_watermark                   # refresh files and hashes
  erasure export outputs/toy_geom_erasing_watermark --format kohya    # + NAME.safetensors for WebUI/ComfyUI
  erasure export outputs/RUN --checkpoint latest                      # a run stopped before its last step
"""

from __future__ import annotations

import argparse
import sys

from erasure.config import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", help="a run directory written by train.py")
    parser.add_argument(
        "--format", choices=["diffusers", "kohya"], default="diffusers", help="kohya adds a WebUI/ComfyUI LoRA file"
    )
    parser.add_argument("--checkpoint", help="'latest' or a checkpoint directory to export the weights of")


def run(args: argparse.Namespace) -> int:
    from erasure.training.export import export_run

    try:
        metadata = export_run(args.run_dir, checkpoint=args.checkpoint, kohya=args.format == "kohya")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for name, digest in metadata["files"].items():
        print(f"{digest[:12]}  {name}")
    print(f"negative prompt: {metadata['negative_prompt']['template']}")
    return 0
