"""What a fine-tuned toy model draws for each form of caption: does the concept follow the text?

    .venv/bin/python benchmarks/caption_forms.py outputs/one_kind/watermark/runs/toy_geom_erasing_watermark \
        [more run dirs] --concept watermark --num-images 48 --guidance 1 --out outputs/caption_forms.json

For each run, the share of images in which the detector finds the concept, on the first ``--num-images`` held-out
prompt and seed pairs of ``erasure evaluate icr``, with four captions per pair: the plain prompt, the prompt with the
concept phrase (``--phrase``, by default what the run's negative-prompt template adds to the prompt, e.g.
"watermark <loc_2_3> <loc_3_3>"), the empty caption (the unconditional branch of classifier-free guidance) and the
phrase alone. At guidance 1 each number is the conditional model alone. A Geom-Erasing run that tied the concept to
its tokens draws it for the phrase and not for the plain prompt; the empty caption shows what guidance subtracts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import detectors
from erasure.evaluation.icr import IcrConfig, heldout_prompts
from erasure.loading import load_pipeline
from erasure.runs import negative_prompt_template

TOY_BASE = "assets/toy-sd"
TOY_DETECTOR = "yolo:assets/detectors/toy_yolo.safetensors"


def concept_phrase(run: Path, phrase: str | None) -> str:
    """``--phrase``, or what the run's template adds after the prompt ("{prompt}, watermark <loc_3_3>")."""
    if phrase is not None:
        return phrase
    template = negative_prompt_template(run)
    if template is None or not template.startswith("{prompt}, "):
        raise SystemExit(f"{run}: no negative_prompt.txt of the form '{{prompt}}, PHRASE'; give --phrase")
    return template.removeprefix("{prompt}, ")


def detection_rate(pipe, detector, captions: list[str], args: argparse.Namespace) -> float:
    hits = 0
    for start in range(0, len(captions), args.batch_size):
        seeds = range(start, min(len(captions), start + args.batch_size))
        generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        images = pipe(
            captions[start : start + args.batch_size],
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            generator=generators,
        ).images
        hits += sum(any(d.concept == args.concept for d in found) for found in detector.detect(images))
    return hits / len(captions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="training run directories")
    parser.add_argument("--concept", default="watermark")
    parser.add_argument("--phrase", help="the concept phrase; default: from each run's negative_prompt.txt")
    parser.add_argument("--model", default=TOY_BASE, help="the base pipeline the runs were trained from")
    parser.add_argument("--detector", default=TOY_DETECTOR)
    parser.add_argument("--num-images", type=int, default=48, help="held-out prompt and seed pairs per form")
    parser.add_argument("--guidance", type=float, default=1.0, help="CFG scale; 1 is the conditional model alone")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    config = IcrConfig(concept=args.concept, detector=args.detector, model=args.model, cells=[])
    prompts = heldout_prompts(config.model_copy(update={"num_images": args.num_images}))
    detector = detectors.load(args.detector)
    results = {}
    for run in args.runs:
        phrase = concept_phrase(run, args.phrase)
        pipe = load_pipeline(args.model, run=run).pipeline
        pipe.set_progress_bar_config(disable=True)
        forms = {
            "plain": prompts,
            "with_phrase": [f"{prompt}, {phrase}" for prompt in prompts],
            "empty": [""] * len(prompts),
            "phrase_only": [phrase] * len(prompts),
        }
        rates = {form: detection_rate(pipe, detector, captions, args) for form, captions in forms.items()}
        results[str(run)] = {"phrase": phrase, "guidance": args.guidance, "n": args.num_images, **rates}
        print(json.dumps({str(run): results[str(run)]}), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
