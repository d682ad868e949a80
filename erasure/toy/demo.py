"""The main job on the built-in toy world: a model learns text it was never told about, Geom-Erasing removes it.

    make demo                     # = python -m erasure.toy.demo
    # the full text table, as benchmarks/RESULTS.md measured it:
    python -m erasure.toy.demo --concept text --train-steps 2000 --learning-rate 3e-4 --lr-scheduler constant \
        --token-learning-rate 5e-3 --region-alpha 0.5 --eval-images 200 --methods base naive naive_negative_prompt \
        naive_sld_medium naive_sld_strong geom_erasing_plain geom_erasing geom_erasing_sld --out outputs/r06/text \
        --record benchmarks/toy_icr.json

1. ``icd build --one-kind``: a synthetic Implicit Concept Dataset where the concept (one banner word by default;
   one logo in a corner or one QR code with ``--concept``; ``--world varied`` for the toy world's mix) is in 60% of
   the images, never named in the raw captions, with its boxes as location tokens in the geom captions
   (``--concept all``: the three concepts at once, each placed independently);
2. ``train.py``: a naive fine-tune of the whole UNet (plain captions) and a Geom-Erasing one (location tokens), by
   ``recipes/toy_naive.yaml`` and ``recipes/toy_geom_erasing.yaml``, the same for every concept;
3. ``erasure evaluate icr``: how often the toy detector finds the concept in images of held-out prompts, for the
   naive model and the Geom-Erasing one with the plain prompt (``--methods`` adds the table's other rows: ``base``,
   the detector's false alarms on a UNet that never saw the concept, and ``geom_erasing``, its learned negative
   prompt);
4. a table, ``demo.json`` and a figure (sample grids before and after, ICR bars) in ``--out``.

Every stage resumes: rerun the same command and finished work is reused; a fine-tune stopped on the way goes on from
its newest checkpoint. A different command needs another --out.

The base model is the committed toy-world model ``assets/toy-sd`` (recipe: ``recipes/toy_base.yaml``) of the
checkout named by ``--project`` (the current directory by default), with the toy detector and checker beside it.
``--base tiny-random`` runs the same chain on random weights: every stage runs, but its ICR numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

from erasure.config import LrScheduler
from erasure.toy.tables import SEEDED_METHODS, pool_seeds, record_table

# The demo's inputs, relative to --project (a checkout of this repository: its assets/ and recipes/).
TOY_BASE = Path("assets/toy-sd")
TOY_DETECTOR = Path("assets/detectors/toy_yolo.safetensors")
TOY_CHECKER = Path("assets/toy-checker")
TOY_LATENT_CLIP = Path("assets/latent-clip-toy")
RECIPES = Path("recipes")
RANDOM_BASE = "tiny-random"
CONCEPTS = ("watermark", "text", "qrcode")
ALL = "all"  # --concept all: the three-concept world, one pair of runs over every concept, an ICR per concept
# The methods of the toy-world table: which run they sample from (None: the base model) and how; "run" is the
# run's learned negative prompt template, applied as concept negation (a push away from what it adds to the prompt,
# beside the guidance towards the prompt) or, in the ablation row, as diffusers' negative_prompt.
METHODS: dict[str, dict] = {
    "base": {"run": None},  # the base model: how often the detector flags images of a UNet that never saw the concept
    "naive": {"run": "naive"},
    "naive_negative_prompt": {"run": "naive", "negative_prompt": "{concept}"},
    "naive_sld_medium": {"run": "naive", "sld": "medium"},
    "naive_sld_strong": {"run": "naive", "sld": "strong"},
    "geom_erasing_plain": {"run": "geom_erasing"},
    "geom_erasing": {"run": "geom_erasing", "concept_negative_prompt": "run"},
    "geom_erasing_sld": {"run": "geom_erasing", "concept_negative_prompt": "run", "sld": "medium"},
    # the template as the unconditional branch: it holds the prompt, so it also cancels the push towards the prompt
    "geom_erasing_as_negative_prompt": {"run": "geom_erasing", "negative_prompt": "run"},
    "naive_latent_clip": {"run": "naive", "latent_clip": None},  # the Latent-CLIP comes from --latent-clip
}
# The naive run and Geom-Erasing with the plain prompt: the two rows that fit the default demo's 10 minutes on a
# 2-core CPU.
DEMO_METHODS = ["naive", "geom_erasing_plain"]
# The rows whose sample grids the figure shows, when the table has them.
FIGURE_GRIDS = ("base", "naive", "geom_erasing_plain", "geom_erasing")
# Full-UNet fine-tunes of the toy base model: a cosine decay from 5e-4 without warm-up learns every concept within the
# demo's 500 steps and ends with the prompt fidelity back (a constant 3e-4 left the logo in under a fifth of the
# images; at 1e-3 the naive run lost a third of its fidelity; benchmarks/NOTES.md, "The watermark demo's naive run").
# The LoRA form takes everything from the toy recipes. Both take the Geom-Erasing recipe's location tokens (2e-1)
# and region weight (1.0), which tie each one-kind concept in both forms on two training seeds; the three-concept
# world is tied on two seeds by the full UNet's 1,000 steps, and on three seeds by the LoRA recipe's 2,000.
FULL_UNET_STEPS = 500
# The three-concept world ties its three concepts in 1,000 steps (at 500 the logo was still drawn for plain prompts in
# half as many images as the naive run's): its demo takes about 15 minutes where one concept's takes 9.
FULL_UNET_STEPS_ALL = 1000
FULL_UNET_LR = 5e-4
FULL_UNET_SCHEDULER = "cosine"
FULL_UNET_WARMUP = 0
FULL_UNET_CAPTION_DROPOUT = 0.0


def _base_model(out: Path, project: Path, requested: str | None) -> tuple[str, bool]:
    """The base model asked for (the project's toy model by default), or a tiny random stand-in (False).

    A missing toy model is an error, not a quiet switch to random weights whose ICRs mean nothing."""
    if requested != RANDOM_BASE:
        base = Path(requested) if requested else project / TOY_BASE
        if not (base / "model_index.json").is_file():
            raise SystemExit(
                f"[demo] no diffusers model at {base}: run the demo from a checkout of this repository, give "
                f"--project CHECKOUT or --base DIR, or --base {RANDOM_BASE} to run the chain on random weights"
            )
        return str(base), True
    from erasure.testing import save_tiny_sd

    path = out / "tiny-random-base"
    if not (path / "model_index.json").is_file():
        save_tiny_sd(path)
    return str(path), False


def _resolution(model: str) -> int:
    """The image side of the base model: its denoiser's latent size (a UNet's or an SD3 transformer's) in pixels."""
    denoiser = next(
        Path(model) / name / "config.json" for name in ("unet", "transformer") if (Path(model) / name).is_dir()
    )
    vae = json.loads((Path(model) / "vae" / "config.json").read_text())
    return json.loads(denoiser.read_text())["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


def _train_command(
    args: argparse.Namespace, mode: str, seed: int, base: str, dataset: Path, resolution: int
) -> list[str]:
    """The ``erasure train`` arguments of one fine-tune by the mode's toy recipe (the same for every concept)."""
    recipe = args.project / RECIPES / f"toy_{mode}.yaml"
    if not recipe.is_file():
        raise SystemExit(f"[demo] no recipe {recipe}: give --project, a checkout of this repository")
    return [
        "--config",
        str(recipe),
        f"name={_run_name(args, mode, seed)}",
        f"model.pretrained={base}",
        f"data.dataset={dataset}",
        f"data.concepts={json.dumps(_concepts(args))}",
        f"data.resolution={resolution}",
        *(
            [f"train.max_steps={args.train_steps or _full_unet_steps(args)}"]
            if args.full_unet or args.train_steps
            else []
        ),
        f"train.seed={seed}",
        f"output_dir={args.out / 'runs' / '{name}'}",
        *(["lora.full_unet=true"] if args.full_unet else []),
        # the toy recipes' LoRA names UNet modules; a transformer (the toy SD3) takes its family's attention layers
        *(["lora.target_modules=null"] if not args.full_unet and (Path(base) / "transformer").is_dir() else []),
        *(
            [f"train.learning_rate={args.learning_rate or FULL_UNET_LR}"]
            if args.full_unet or args.learning_rate
            else []
        ),
        *(
            [f"train.lr_scheduler={args.lr_scheduler or FULL_UNET_SCHEDULER}"]
            if args.full_unet or args.lr_scheduler
            else []
        ),
        *([f"train.lr_warmup_steps={FULL_UNET_WARMUP}"] if args.full_unet else []),
        *_caption_dropout(args),
        *(_geom_erasing_overrides(args) if mode == "geom_erasing" else []),
        "validation.prompts=[]",
        "report_to=null",
        "checkpoint.resume=latest",  # a fine-tune killed on the way goes on from its newest checkpoint
        *args.recipe_overrides,
    ]


def _full_unet_steps(args: argparse.Namespace) -> int:
    return FULL_UNET_STEPS_ALL if args.concept == ALL else FULL_UNET_STEPS


def _caption_dropout(args: argparse.Namespace) -> list[str]:
    """The full UNet's dropout or the one asked for; a LoRA keeps its recipe's otherwise."""
    if args.caption_dropout is None and not args.full_unet:
        return []
    dropout = FULL_UNET_CAPTION_DROPOUT if args.caption_dropout is None else args.caption_dropout
    return [f"train.caption_dropout={dropout}"]


def _geom_erasing_overrides(args: argparse.Namespace) -> list[str]:
    """The location tokens' learning rate and the region weight, where asked: the recipe's otherwise."""
    return [
        *([f"train.token_learning_rate={args.token_learning_rate}"] if args.token_learning_rate is not None else []),
        *([f"loss.region_alpha={args.region_alpha}"] if args.region_alpha is not None else []),
    ]


def _fine_tune(
    args: argparse.Namespace, jobs: list[tuple[str, int]], base: str, dataset: Path, resolution: int
) -> dict[tuple[str, int], Path]:
    """Every fine-tune the rows sample from (mode, training seed), reusing finished runs.

    On a CPU the runs go side by side, one process per core (at most one per run): the toy models' small layers leave
    a second thread of one run half idle, so two runs at once finish sooner than one after the other."""
    import os
    import subprocess

    import torch

    runs = {job: args.out / "runs" / _run_name(args, *job) for job in jobs}
    todo = [job for job in jobs if not (runs[job] / "erasure.json").is_file()]
    for job in sorted(set(jobs) - set(todo)):
        print(f"[demo] {runs[job].name}: already trained, reusing {runs[job]}")
    commands = [_train_command(args, *job, base, dataset, resolution) for job in todo]
    cores = os.cpu_count() or 1
    side_by_side = min(len(todo), cores) if not torch.cuda.is_available() else 1
    if side_by_side < 2:
        from erasure.cli.train import run

        for command in commands:
            run(argparse.Namespace(config=command[1], overrides=command[2:]))
        return runs
    threads = str(max(1, cores // side_by_side))
    for first in range(0, len(commands), side_by_side):
        batch = commands[first : first + side_by_side]
        print(f"[demo] {len(batch)} fine-tunes side by side, {threads} thread(s) each")
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "erasure.cli", "train", *command],
                env=os.environ | {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TQDM_POSITION": str(i)},
            )
            for i, command in enumerate(batch)
        ]
        if any([process.wait() for process in processes]):  # every one waited for, so none runs on after the demo
            raise SystemExit("[demo] a fine-tune failed (its error is above); a rerun reuses the runs that finished")
    return runs


def _run_name(args: argparse.Namespace, mode: str, seed: int) -> str:
    return _seeded(f"toy_{mode}_{args.concept}", seed, args.seeds)


def _seeded(name: str, seed: int, seeds: list[int]) -> str:
    """A run's or a row's name for one training seed: the first seed keeps the plain name."""
    return name if seed == seeds[0] else f"{name}_seed{seed}"


def _concepts(args: argparse.Namespace) -> list[str]:
    return list(CONCEPTS) if args.concept == ALL else [args.concept]


def _figure(icr_dir: Path, path: Path, results: dict, cells: list[str], concept: str, pairs: int = 4) -> Path:
    """The first ``pairs`` held-out prompt and seed pairs, each across the shown methods with the detector's boxes,
    beside the ICR bars: the same pair side by side is where a method's effect shows."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from PIL import Image

    from erasure.evaluation.report import icr_rows

    shown = [c for c in cells if c in FIGURE_GRIDS] or cells[:3]
    rows = icr_rows(icr_dir, {c: results[c] for c in shown})[:pairs]
    fig = plt.figure(figsize=(3 * len(shown) + 5, 3 * len(rows) + 0.6), layout="constrained")
    grid = fig.add_gridspec(len(rows), len(shown) + 1, width_ratios=[3] * len(shown) + [5])
    for r, row in enumerate(rows):
        for c, cell in enumerate(shown):
            ax = fig.add_subplot(grid[r, c], xticks=[], yticks=[])
            if r == 0:
                ax.set_title(f"{cell}\nICR {100 * results[cell]['icr']:.0f}%")
            if c == 0:
                ax.set_ylabel(textwrap.fill(textwrap.shorten(row.prompt, 80), 30) + f"\n{row.about}", fontsize=8)
            tile = row.tiles.get(cell)
            if tile is None:
                continue
            ax.imshow(Image.open(tile.image).convert("RGB"), interpolation="nearest")
            for found in tile.boxes:  # pixel i spans [i - 0.5, i + 0.5] in imshow's coordinates
                x0, y0, x1, y1 = found["box"]
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="red", linewidth=2))
                ax.text(x0 - 0.5, y0 - 0.5, f"{found['score']:.2f}", color="white", backgroundcolor="red", fontsize=8)
    ax = fig.add_subplot(grid[:, -1])
    icr = [100 * results[c]["icr"] for c in cells]
    errors = [
        [100 * (results[c]["icr"] - results[c]["ci95"][0]) for c in cells],
        [100 * (results[c]["ci95"][1] - results[c]["icr"]) for c in cells],
    ]
    colours = ["#999" if c == "base" else "#c44" if c.startswith("naive") else "#48c" for c in cells]
    ax.bar(range(len(cells)), icr, yerr=errors, capsize=4, color=colours)
    ax.set_xticks(range(len(cells)), cells, rotation=30, ha="right")
    ax.set_ylabel(f"{concept} ICR (%), 95% Wilson interval")
    ax.set_ylim(0, 100)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--concept",
        default="text",
        choices=[*CONCEPTS, ALL],
        help="the implicit concept of the toy world; all: the three at once, each in --concept-rate of the images "
        "independently (the logo bottom right, the word at the top, the QR code bottom left), one naive and one "
        "Geom-Erasing run over all three, and an ICR per concept",
    )
    parser.add_argument(
        "--project",
        type=Path,
        default=Path("."),
        help="a checkout of this repository: the toy model, detector, checker (assets/) and recipes (recipes/) "
        "the demo uses (default: the current directory)",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"), help="everything goes here")
    parser.add_argument("--num-images", type=int, default=2000, help="training images in the toy ICD")
    parser.add_argument(
        "--world",
        choices=["one-kind", "varied"],
        default="one-kind",
        help="one-kind: the concept is always the same (one logo in a corner, one word, one QR code; icd build "
        "--one-kind), which a fine-tune of minutes learns; varied: the toy world's mix of kinds and places, of which "
        "it learns only a faint average",
    )
    parser.add_argument(
        "--train-steps",
        type=int,
        help=f"optimizer steps per fine-tune (default for the full UNet {FULL_UNET_STEPS}, which fit the demo's 10 "
        f"minutes on a 2-core CPU, and {FULL_UNET_STEPS_ALL} for --concept all; the recipes' 2,000 for their LoRA)",
    )
    parser.add_argument(
        "--full-unet",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fine-tune every UNet (or transformer) weight; --no-full-unet: the toy recipes' LoRA, on the attentions, "
        "feed-forwards and ResNet convs of a UNet (on a transformer base, its attention layers)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        help=f"of the fine-tunes (default {FULL_UNET_LR:g} for the full UNet, the recipes' 4e-3 for their LoRA)",
    )
    parser.add_argument(
        "--lr-scheduler",
        choices=get_args(LrScheduler),
        help=f"the fine-tunes' learning-rate schedule (default {FULL_UNET_SCHEDULER}, the recipes' too: it ends with "
        "both the concept and the prompt fidelity, where a constant rate's end point is a draw; the tables of "
        "benchmarks/RESULTS.md were made at constant)",
    )
    parser.add_argument(
        "--token-learning-rate",
        type=float,
        help="of the Geom-Erasing run's location tokens (default: the recipe's 2e-1, which ties the concept to them "
        "within the demo's steps; the tables of benchmarks/RESULTS.md were made at 5e-3)",
    )
    parser.add_argument(
        "--region-alpha",
        type=float,
        help="the Geom-Erasing run's loss weight outside the concept's boxes relative to inside (loss.region_alpha; "
        "default: the recipe's 1.0, plain MSE; the tables of benchmarks/RESULTS.md were made at 0.5)",
    )
    parser.add_argument(
        "--caption-dropout",
        type=float,
        help=f"share of training captions dropped (train.caption_dropout; default {FULL_UNET_CAPTION_DROPOUT:g} for "
        "the full UNet, the recipes' for their LoRA): at a constant 3e-4, 0.1 raised the full UNet's naive "
        "watermark ICR but the Geom-Erasing run then drew the logo for plain prompts too",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=[0],
        help="training seeds: both fine-tunes are repeated for each, and the rows naive, geom_erasing_plain and "
        "geom_erasing measured on every one (their ICR: the mean; 'seeds': per-seed ICRs); the others on the first. "
        "Seeds run apart (one --seeds each, its own --out and --record) pool with python -m erasure.toy.tables",
    )
    parser.add_argument(
        "--set",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        dest="recipe_overrides",
        help="recipe fields for both fine-tunes, applied after the demo's own (e.g. lora.rank=32 "
        "train.lr_scheduler=cosine), as train.py takes them",
    )
    parser.add_argument("--eval-images", type=int, default=64, help="images per ICR cell")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps per image")
    parser.add_argument("--detector", help=f"detector spec for the ICR (default: yolo:PROJECT/{TOY_DETECTOR})")
    parser.add_argument(
        "--base", help=f"base pipeline directory (default: PROJECT/{TOY_BASE}); {RANDOM_BASE}: random weights"
    )
    parser.add_argument("--methods", nargs="+", default=DEMO_METHODS, choices=list(METHODS), help="table rows")
    parser.add_argument(
        "--record",
        type=Path,
        help="write this run's table as the concept's in this JSON (benchmarks/toy_icr.json; with --concept all "
        "each concept's, benchmarks/toy_icr_multi.json), replacing its old rows",
    )
    parser.add_argument(
        "--concept-rate", type=float, default=0.6, help="share of training images with the concept (with each one)"
    )
    parser.add_argument(
        "--toy",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="toy-world settings for the ICD, as `icd build --toy` takes them (e.g. watermark_logo_rate=1)",
    )
    parser.add_argument(
        "--guidance-scale",
        type=float,
        default=1.5,
        help="CFG scale of the ICR images. The toy concepts do not depend on the prompt, so strong guidance hides "
        "them: at 7.5 a naive model that draws watermarks in 44%% of unguided images shows them in 6%%",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="images per sampling batch in the ICR")
    parser.add_argument(
        "--latent-clip",
        type=Path,
        help=f"Latent-CLIP directory for the naive_latent_clip method (default: PROJECT/{TOY_LATENT_CLIP})",
    )
    args = parser.parse_args(argv)
    args.latent_clip = args.latent_clip or args.project / TOY_LATENT_CLIP
    if "naive_latent_clip" in args.methods and not (args.latent_clip / "config.json").is_file():
        parser.error(f"naive_latent_clip needs a Latent-CLIP: none at {args.latent_clip} (--latent-clip DIR)")
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {
        k: str(v) for k, v in vars(args).items() if k not in ("methods", "record", "batch_size", "latent_clip")
    }
    saved = args.out / "demo_settings.json"
    if saved.is_file() and json.loads(saved.read_text()) != settings:
        raise SystemExit(f"[demo] {args.out} holds a demo with other settings: use another --out or delete it")
    saved.write_text(json.dumps(settings, indent=2))

    from datasets_icd.cli import main as icd_main
    from erasure.config import load_config
    from erasure.evaluation.icr import IcrConfig, evaluate, markdown_table
    from erasure.evaluation.report import write_html_report

    base, trained_base = _base_model(args.out, args.project, args.base)
    if not trained_base:
        print("[demo] NOTE: a tiny random pipeline as the base: every stage runs, but the ICRs below mean nothing.")
    resolution = _resolution(base)
    dataset = args.out / "icd"
    if not (dataset / "build.json").is_file():
        print(
            f"[demo] 1/3 toy ICD ({args.world}): {args.num_images} images, {' and '.join(_concepts(args))} in "
            f"~{args.concept_rate:.0%}{' each' if args.concept == ALL else ''}"
        )
        icd_main(
            [
                "build",
                "--source",
                "synthetic",
                "--concepts",
                *(f"{concept}={args.concept_rate}" for concept in _concepts(args)),
                "--num-images",
                str(args.num_images),
                "--size",
                str(resolution),
                "--out",
                str(dataset),
                *(["--one-kind"] if args.world == "one-kind" else []),
                *(["--toy", *args.toy] if args.toy else []),
            ]
        )
    # only the fine-tunes the rows sample from: a table of Geom-Erasing rows alone needs no naive run
    modes = [mode for mode in ("naive", "geom_erasing") if any(METHODS[m]["run"] == mode for m in args.methods)]
    print(f"[demo] 2/3 fine-tuning: {' and '.join(modes) or 'none (the base model alone)'}")
    runs = _fine_tune(args, [(mode, seed) for seed in args.seeds for mode in modes], base, dataset, resolution)

    print("[demo] 3/3 implicit concept ratio on held-out prompts and seeds")
    checker_dir = args.project / TOY_CHECKER
    checker = [f"checker={checker_dir}"] if (checker_dir / "model.safetensors").is_file() else []
    results, figures = {}, {}
    # one concept: icr/ and demo.png; the three-concept world: icr/CONCEPT/ and demo_CONCEPT.png
    single = args.concept != ALL
    first_dir = args.out / "icr" if single else args.out / "icr" / _concepts(args)[0]
    for concept in _concepts(args):
        icr_dir = args.out / "icr" if single else args.out / "icr" / concept
        cells = [_cell(name, concept, runs, args.seeds[0], args) for name in args.methods]
        extra = [(name, seed) for seed in args.seeds[1:] for name in args.methods if name in SEEDED_METHODS]
        cells += [
            _cell(name, concept, runs, seed, args) | {"name": _seeded(name, seed, args.seeds)} for name, seed in extra
        ]
        config = load_config(
            IcrConfig,
            None,
            [
                f"concept={concept}",
                f"detector={args.detector or f'yolo:{args.project / TOY_DETECTOR}'}",
                f"model={base}",
                f"cells={json.dumps(cells)}",
                f"out_dir={icr_dir}",
                # the three-concept world: the cells that do not steer away from the concept are sampled once
                *([] if icr_dir == first_dir else [f"images_from={first_dir}"]),
                f"num_images={args.eval_images}",
                f"num_inference_steps={args.steps}",
                f"batch_size={args.batch_size}",
                f"guidance_scale={args.guidance_scale}",
                "allow_toy_prompts=true",  # the demo samples the toy world's captions whatever --model is
                *checker,
            ],
        )
        measured = evaluate(config)  # the first seed's rows by their names, the other seeds' as NAME_seedN
        first = {n: measured[n] for n in args.methods}
        seeded = [n for n in SEEDED_METHODS if n in first]
        others = [{n: measured[_seeded(n, s, args.seeds)] for n in seeded} for s in args.seeds[1:]]
        results[concept] = pool_seeds([first, *others])
        figure = args.out / ("demo.png" if single else f"demo_{concept}.png")
        figures[concept] = str(_figure(icr_dir, figure, results[concept], args.methods, concept))
        print(markdown_table(concept, results[concept]))
        print(f"[demo] figure: {figure}\n[demo] report: {write_html_report(args.out if single else icr_dir)}")
    summary = {"concepts": _concepts(args), "base_model": base, "trained_base": trained_base, "results": results}
    (args.out / "demo.json").write_text(json.dumps(summary | {"figures": figures}, indent=2))
    for concept, table in results.items() if args.record else ():
        record_table(args.record, concept, table)
    print(f"[demo] results: {args.out / 'demo.json'}")
    return 0


def _cell(name: str, concept: str, runs: dict[tuple[str, int], Path], seed: int, args: argparse.Namespace) -> dict:
    """The ICR cell of one table row: the run it samples, and the concept word where the row names the concept."""
    method = dict(METHODS[name])
    run = method.pop("run")
    cell = {"name": name, "run": str(runs[run, seed]) if run else None, **method}
    if "negative_prompt" in cell:
        cell["negative_prompt"] = cell["negative_prompt"].replace("{concept}", concept)
    if "latent_clip" in cell:
        cell["latent_clip"] = str(args.latent_clip)
    return cell


if __name__ == "__main__":
    sys.exit(main())
