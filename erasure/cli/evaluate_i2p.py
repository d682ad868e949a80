"""Generate I2P images with one method, judge them with NudeNet and Q16, and report as the SLD paper does.

examples:
  erasure evaluate i2p --model stable-diffusion-v1-5/stable-diffusion-v1-5 --out outputs/i2p/sd15
  erasure evaluate i2p --model DIR --sld medium --out outputs/i2p/sld-medium
  erasure evaluate i2p --model DIR --run outputs/RUN --out outputs/i2p/geom --categories sexual
  accelerate launch -m erasure.cli evaluate i2p --model DIR --out outputs/i2p/sd15   # one share per process

Writes OUT/results.json (per category, overall and per prompt), OUT/report.md and OUT/report.png; images and
judgments stay under OUT, and running the same command again resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from erasure.evaluation.i2p.harness import GenerationSettings, Method, process_state, run_i2p
from erasure.evaluation.i2p.judges import JUDGE_NAMES, Q16_CLIP, Q16_PROMPTS, load_judges
from erasure.evaluation.i2p.metrics import summarize
from erasure.evaluation.i2p.prompts import CATEGORIES, HUB_ID, load_prompts
from erasure.evaluation.i2p.report import markdown_table, write_report
from erasure.evaluation.report import write_html_report
from erasure.loading import DTYPES, resolve_dtype
from erasure.sld import SafetyConfig


def _guidance(value: str) -> float | None:
    return None if value == "row" else float(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    method = parser.add_argument_group("method")
    method.add_argument("--model", required=True, help="diffusers model directory or hub id")
    method.add_argument("--sld", choices=SafetyConfig.PRESETS, help="Safe Latent Diffusion preset (default: off)")
    method.add_argument(
        "--run",
        help="training run directory: its LoRA, its location tokens and its negative_prompt.txt template, applied as "
        "concept negation (a push away from what the filled template adds to each prompt)",
    )
    method.add_argument("--negative-prompt", help="negative prompt; '{prompt}' is replaced by each I2P prompt")
    method.add_argument("--latent-clip", help="Latent-CLIP directory: guide sampling away from --latent-guidance")
    method.add_argument("--latent-guidance", metavar="CONCEPT", help="with --latent-clip: the concept to avoid")
    method.add_argument("--name", help="the method's column in reports (default: from the options above)")
    data = parser.add_argument_group("prompts")
    data.add_argument("--prompts", default=HUB_ID, help="hub id or local .csv / .parquet copy of I2P")
    data.add_argument("--categories", nargs="+", choices=CATEGORIES, metavar="CATEGORY", help="keep these only")
    data.add_argument("--hard-only", action="store_true", help="keep only the prompts I2P marks hard")
    data.add_argument("--limit", type=int, help="keep the first N prompts that pass the filters")
    sampling = parser.add_argument_group("sampling (the reference's by default)")
    sampling.add_argument("--steps", type=int, default=50)
    sampling.add_argument(
        "--guidance", type=_guidance, default=7.5, help="guidance scale, or 'row' for each prompt's own"
    )
    sampling.add_argument("--calls", type=int, default=2, help="pipeline calls per prompt, from one generator")
    sampling.add_argument("--images-per-call", type=int, default=5)
    sampling.add_argument("--height", type=int)
    sampling.add_argument("--width", type=int)
    sampling.add_argument("--dtype", choices=DTYPES, default="auto", help="auto: float16 on a GPU, float32 on a CPU")
    judging = parser.add_argument_group("judges")
    judging.add_argument("--judges", nargs="+", choices=JUDGE_NAMES, default=list(JUDGE_NAMES))
    judging.add_argument("--q16-clip", default=Q16_CLIP, help="CLIP ViT-L/14 directory or hub id")
    judging.add_argument("--q16-prompts", type=Path, default=Q16_PROMPTS, help="Q16 prompt embeddings (safetensors)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the expected-maximum bootstrap")
    parser.add_argument("--out", type=Path, required=True, help="run directory (resumed if it exists)")


def method_name(args: argparse.Namespace) -> str:
    if args.name:
        return args.name
    parts = [Path(args.run).name if args.run else Path(args.model).name]
    if args.sld:
        parts.append(f"SLD {args.sld}")
    if args.negative_prompt:
        parts.append("negative prompt")
    if args.latent_guidance:
        parts.append("Latent-CLIP")
    return " + ".join(parts)


def run(args: argparse.Namespace) -> int:
    state = process_state()
    method = Method(
        method_name(args),
        args.model,
        args.sld,
        args.run,
        args.negative_prompt,
        args.latent_clip,
        args.latent_guidance,
    )
    settings = GenerationSettings(args.steps, args.guidance, args.calls, args.images_per_call, args.height, args.width)
    dtype = resolve_dtype(args.dtype, state.device.type)
    prompts = load_prompts(
        args.prompts, categories=args.categories, hard=True if args.hard_only else None, limit=args.limit
    )
    if not prompts:
        raise ValueError(f"no prompt of {args.prompts} passes the filters (--categories, --hard-only, --limit)")
    judges = load_judges(args.judges, q16_clip=args.q16_clip, q16_prompts=args.q16_prompts, device=state.device)
    outcomes = run_i2p(prompts, method, judges, args.out, settings=settings, dtype=dtype)
    if outcomes is None:  # not the main process: it has written its share
        return 0
    results = {
        "method": asdict(method),
        "settings": asdict(settings),
        "judges": args.judges,
        "prompts_source": str(args.prompts),
        **summarize(outcomes, seed=args.bootstrap_seed),
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    write_report({method.name: results}, args.out)
    print(markdown_table({method.name: results}))
    print(f"report: {write_html_report(args.out)}")
    return 0
