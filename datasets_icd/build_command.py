"""Build an Implicit Concept Dataset: images, captions, and per concept its existence phrase and location tokens.

examples:
  icd build --source synthetic --num-images 2000 --out outputs/icd
  icd build --source synthetic --concepts watermark=0.5 qrcode=0.2 --size 256 --out outputs/icd256
  icd build --source synthetic --concepts watermark=0.5 --toy watermark_logo_rate=1 watermark_tiled_rate=0 \
      "position_priors={watermark: {bottom_right: 1}}" --out outputs/icd-one-logo
  icd build --source folder:photos --detectors qr ocr --num-proc 4 --out outputs/photos-icd
  icd build --source folder:photos --paste watermark=0.5 text=0.3 qrcode=0.2 \
      --paste-config split=heldout repeats=4 jpeg_rate=0.8 --out outputs/photos-pasted
  icd build --source hf:outputs/my-dataset --caption-column caption --detectors yolo:runs/wm.safetensors --out out/x
  icd build --source folder:photos --detectors qr ocr yolo:assets/detectors/photo_yolo.safetensors \
      --captioner models/vit-gpt2-captioning --out outputs/photos-icd
  accelerate launch -m datasets_icd.cli build --source folder:photos --detectors qr --out /shared/icd

A killed build continues with the same command plus --resume. The dataset is OUT itself
(datasets.load_from_disk(OUT)), with parquet shards in OUT/parquet/, OUT/report.md, OUT/report.png (box centres
and sizes), OUT/samples.png (images with their boxes drawn) and OUT/build.json.
"""

from __future__ import annotations

import argparse
import sys

import yaml

from datasets_icd.build import BuildConfig, build
from datasets_icd.geometry import DEFAULT_GRID
from datasets_icd.paste import PasteConfig
from datasets_icd.toyworld import ToyWorldConfig, one_kind_settings


def _pairs(values: list[str], option: str) -> list[tuple[str, str | None]]:
    pairs = []
    for value in values:
        key, sep, rest = value.partition("=")
        if not key or (sep and not rest):
            raise ValueError(f"{option} '{value}' should be NAME or NAME=VALUE")
        pairs.append((key, rest if sep else None))
    return pairs


def _settings(values: list[str], option: str) -> dict:
    """``FIELD=VALUE`` pairs with YAML values, as --toy and --paste-config take them."""
    settings = dict(_pairs(values, option))
    if None in settings.values():
        raise ValueError(f"{option} {values}: every setting needs a value, FIELD=VALUE")
    try:
        return {key: yaml.safe_load(value) for key, value in settings.items()}
    except yaml.YAMLError as err:
        raise ValueError(f"{option} {values}: a value is not YAML: {err}") from None


def _paste_config(args: argparse.Namespace) -> PasteConfig | None:
    if not args.paste:
        if args.paste_config:
            raise ValueError("--paste-config needs --paste NAME=RATE ... to say what to paste")
        return None
    rates = {}
    for name, rate in _pairs(args.paste, "--paste"):
        try:
            rates[name] = float(rate)
        except (TypeError, ValueError):
            raise ValueError(f"--paste '{name}' needs a rate between 0 and 1, e.g. --paste {name}=0.5") from None
    return PasteConfig(**{**_settings(args.paste_config, "--paste-config"), "rates": rates})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source", default="synthetic", help="synthetic, folder:PATH or hf:NAME (default synthetic)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--concepts", nargs="+", metavar="NAME[=RATE]", help="concepts to keep; for synthetic, rates")
    parser.add_argument("--detectors", nargs="+", default=[], metavar="SPEC", help="qr, ocr, yolo:PATH, nudenet ...")
    parser.add_argument("--grid", type=int, default=DEFAULT_GRID, help="location grid side (default 4)")
    parser.add_argument("--phrase", nargs="+", default=[], metavar="NAME=PHRASE", help="existence phrase of a concept")
    parser.add_argument("--num-images", type=int, help="toy world size, or the first N items of a source")
    parser.add_argument("--num-proc", type=int, default=1, help="worker processes on this machine")
    parser.add_argument("--resume", action="store_true", help="continue a killed build in --out")
    parser.add_argument("--size", type=int, default=64, help="synthetic image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="synthetic world seed")
    parser.add_argument(
        "--toy",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="synthetic: other toy-world settings (datasets_icd.toyworld.ToyWorldConfig fields, YAML values), "
        "e.g. watermark_logo_rate=1 'size_ranges={watermark: [0.14, 0.16]}'",
    )
    parser.add_argument(
        "--one-kind",
        action="store_true",
        help="synthetic: each concept of one kind: one logo in the bottom-right corner, the word 'sale' at the top, "
        "one QR code (datasets_icd.toyworld.ONE_KIND); --toy settings apply on top",
    )
    parser.add_argument(
        "--paste",
        nargs="+",
        metavar="NAME=RATE",
        help="folder/hf: paste concepts onto the images at these rates (watermark, text, qrcode); the pasted boxes "
        "are the ground truth (datasets_icd.paste)",
    )
    parser.add_argument(
        "--paste-config",
        nargs="+",
        default=[],
        metavar="FIELD=VALUE",
        help="with --paste: other settings (datasets_icd.paste.PasteConfig fields, YAML values), "
        "e.g. split=heldout repeats=4 'jpeg_quality=[30, 70]'",
    )
    parser.add_argument(
        "--captioner",
        metavar="MODEL_DIR",
        help="caption the images that have no caption with this local transformers image-captioning model folder "
        "(e.g. a saved ViT-GPT2 or BLIP; read with local_files_only, nothing is downloaded)",
    )
    parser.add_argument("--image-column", default="image", help="hf: the image column")
    parser.add_argument("--caption-column", help="hf/folder: the caption column (default text, then caption)")
    parser.add_argument("--split", default="train", help="hf: the split")
    parser.add_argument("--chunk-size", type=int, default=200, help="images per resumable chunk")
    parser.add_argument("--batch-size", type=int, default=16, help="images per detector call")


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    concepts = _pairs(args.concepts, "--concepts") if args.concepts else None
    rates = ToyWorldConfig().concept_rates
    if concepts is not None and args.source == "synthetic":
        rates = {name: float(rate) if rate is not None else rates.get(name, 0.0) for name, rate in concepts}
    settings = _settings(args.toy, "--toy")
    if args.one_kind:
        settings = one_kind_settings([name for name, rate in rates.items() if rate > 0]) | settings
    toy = ToyWorldConfig(**{**settings, "size": args.size, "seed": args.seed, "concept_rates": rates})
    return BuildConfig(
        source=args.source,
        num_images=args.num_images,
        concepts=[name for name, _ in concepts] if concepts is not None else None,
        detectors=args.detectors,
        grid=args.grid,
        phrases={name: phrase or name for name, phrase in _pairs(args.phrase, "--phrase")},
        toy=toy,
        paste=_paste_config(args),
        captioner=args.captioner,
        image_column=args.image_column,
        caption_column=args.caption_column,
        split=args.split,
        chunk_size=args.chunk_size,
        batch_size=args.batch_size,
    )


def run(args: argparse.Namespace) -> int:
    summary = build(config_from_args(args), args.out, num_proc=args.num_proc, resume=args.resume)
    if summary:  # only the main process reports
        rates = ", ".join(f"{name} {s['rate']:.1%}" for name, s in summary["concepts"].items()) or "no concepts"
        print(f"{summary['rows']} images ({rates}), {len(summary['skipped'])} skipped -> {args.out}")
        if summary["uncaptioned"]:
            print(
                f"warning: {summary['uncaptioned']} images have no caption (see {args.out}/report.md; "
                "--captioner MODEL_DIR writes them)",
                file=sys.stderr,
            )
    return 0
