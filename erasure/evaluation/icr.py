"""Implicit concept ratio (ICR): the share of generated images in which a detector finds the concept.

    erasure evaluate icr --config recipes/icr_toy_watermark.yaml [key=value ...]

An evaluation is a table of *cells* (a method: base model or training run, negative prompt, SLD preset),
each generating ``num_images`` images from the same held-out prompt and seed pairs, so cells differ only in
the method. Images and per-image detections are kept on disk, so a killed evaluation resumes where it
stopped; finished cells are never generated again. Each detection record names its detector: run with another
``detector`` and the stored images are detected again, not generated again.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path

import torch
from pydantic import Field
from tqdm.auto import tqdm

from erasure.config import StrictModel

TOY_MODEL_MARKER = "toy_base.json"  # written by erasure.toy.base next to a toy-world model's model_index.json


class IcrCell(StrictModel):
    """One method to measure."""

    name: str = Field(description="method name in the results table, e.g. naive, geom_erasing")
    model: str | None = Field(None, description="pipeline to sample from; defaults to the evaluation's model")
    run: str | None = Field(None, description="a training run directory (LoRA or fine-tuned model + learned tokens)")
    lora_scale: float = Field(1.0, description="weight of the run's LoRA")
    negative_prompt: str | None = Field(
        None, description="negative prompt; '{prompt}' is replaced by each prompt; 'run' takes the run's template"
    )
    concept_negative_prompt: str | None = Field(
        None,
        description="the prompt with the concept added, pushed away from beside the guidance towards the prompt "
        "(SLDPipeline's concept negation); '{prompt}' and 'run' as for negative_prompt",
    )
    concept_negative_scale: float | None = Field(
        None, ge=0, description="weight of the concept negation; defaults to guidance_scale - 1"
    )
    sld: str | None = Field(None, description="SLD preset: weak, medium, strong, max")
    safety_concept: str | None = Field(
        None, description="concept SLD and Latent-CLIP guidance steer away from; defaults to the evaluated concept"
    )
    latent_clip: str | None = Field(None, description="a Latent-CLIP directory: guide sampling away from the concept")
    latent_guidance_scale: float = Field(0.05, ge=0, description="Latent-CLIP guidance step per guided step")
    latent_guidance_warmup: int = Field(0, ge=0, description="denoising steps before Latent-CLIP guidance starts")
    latent_guidance_stop: int | None = Field(8, ge=1, description="denoising step where Latent-CLIP guidance ends")


class IcrConfig(StrictModel):
    concept: str = Field(description="the implicit concept the detector looks for")
    detector: str = Field(
        description="detector spec for detectors.load, e.g. yolo:assets/detectors/toy_yolo.safetensors"
    )
    model: str = Field(description="base pipeline: diffusers directory, hub id or single .safetensors file")
    pipeline_config: str | None = Field(
        None, description="for a single-file model offline: a diffusers folder of the same architecture"
    )
    cells: list[IcrCell] = Field(description="the methods to compare")
    out_dir: str = Field("outputs/icr", description="where images, detections and results go")
    images_from: str | None = Field(
        None,
        description="out_dir of the same cells evaluated for another concept: a cell whose images do not depend on "
        "the concept (no SLD or Latent-CLIP guidance away from it) starts from its images, detected again",
    )
    num_images: int = Field(200, ge=1, description="images per cell, one per held-out prompt and seed pair")
    prompts: list[str] = Field(default_factory=list, description="prompts; empty: held-out toy-world captions")
    allow_toy_prompts: bool = Field(
        False,
        description="sample toy-world captions from a model that is not a toy-world model (one without "
        "toy_base.json, e.g. a tiny test model); a real model on toy captions measures nothing",
    )
    prompt_seed: int = Field(10_000, description="toy-world seed of the held-out captions (training used others)")
    seed: int = Field(0, description="image i is sampled from a generator seeded with seed + i")
    num_inference_steps: int = Field(25, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    resolution: int | None = Field(None, ge=8, description="image side; defaults to the model's")
    batch_size: int = Field(8, ge=1)
    device: str = Field("auto", description="torch device; auto: cuda when a GPU is present, else cpu")
    dtype: str = Field("auto", description="float32, float16, bfloat16; auto: float16 on a GPU, float32 on a CPU")
    checker: str | None = Field(
        None, description="toy checker directory (erasure.toy.checker): adds prompt fidelity and toy FID per cell"
    )


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion: honest near 0 and 1, where ICRs live."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _heldout_world(config: IcrConfig):
    from datasets_icd.toyworld import ToyWorld, ToyWorldConfig

    return ToyWorld(ToyWorldConfig(seed=config.prompt_seed, concept_rates={}))


def check_prompts(config: IcrConfig) -> None:
    """Toy-world captions are for toy-world models: refuse a real model on them unless told."""
    models = {config.model} | {cell.model for cell in config.cells if cell.model}
    foreign = [m for m in models if not (Path(m) / TOY_MODEL_MARKER).is_file()]
    if not config.prompts and foreign and not config.allow_toy_prompts:
        raise ValueError(
            f"model {foreign[0]} is not a toy-world model (no {TOY_MODEL_MARKER}) and no prompts are given: "
            "held-out toy captions measure nothing on it. Give prompts (prompts=[...] or a YAML list), or set "
            "allow_toy_prompts=true"
        )


def heldout_prompts(config: IcrConfig) -> list[str]:
    """The evaluation's prompts, cycled to ``num_images``; toy-world captions from an unseen seed by default."""
    if config.prompts:
        base = config.prompts
    else:
        world = _heldout_world(config)
        base = [world.sample(i).caption for i in range(config.num_images)]
    return [base[i % len(base)] for i in range(config.num_images)]


class QualityJudge:
    """Prompt fidelity and toy FID of a cell's images; the checker and the clean reference scenes of the held-out
    prompts are made once per evaluation and shared by every cell."""

    def __init__(self, config: IcrConfig) -> None:
        from erasure.toy.checker import load_checker

        self.checker = load_checker(config.checker)
        world = _heldout_world(config)
        self.reference = [world.sample(i).image for i in range(config.num_images)]

    def __call__(self, images: list, prompts: list[str]) -> dict[str, float]:
        from erasure.toy.checker import fidelity, toy_fid

        scores = fidelity(self.checker, images, prompts)
        return {"fidelity": scores["fidelity"], "fid": toy_fid(self.checker, images, self.reference)}


def detector_identity(spec: str) -> str:
    """The spec and a digest of each file it names: new weights at the same path are another detector."""
    files = [Path(part) for part in re.split(r"[:?&=]", spec) if part and Path(part).is_file()]
    return " ".join([spec, *(hashlib.sha256(f.read_bytes()).hexdigest()[:16] for f in files)])


def _records_path(cell_dir: Path) -> Path:
    return cell_dir / "detections.jsonl"


def _load_records(cell_dir: Path) -> dict[int, dict]:
    path = _records_path(cell_dir)
    if not path.exists():
        return {}
    records = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            records[record["index"]] = record
    return records


def _write_records(cell_dir: Path, records: dict[int, dict]) -> None:
    tmp = _records_path(cell_dir).with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(records[i]) + "\n" for i in sorted(records)), encoding="utf-8")
    tmp.replace(_records_path(cell_dir))


def _hits(config: IcrConfig, detections: list) -> list[dict]:
    return [d.as_record() for d in detections if d.concept == config.concept]


def _redetect(config: IcrConfig, cell_dir: Path, records: dict[int, dict], detector, identity: str) -> None:
    """Detect again, with this evaluation's detector, the stored images another detector scored; records whose
    image is gone are dropped, so those images are generated again."""
    from PIL import Image

    stale = [i for i, r in records.items() if r.get("detector") != identity]
    if not stale:
        return
    for i in [i for i in stale if not (cell_dir / "images" / f"{i:05d}.png").is_file()]:
        del records[i]
    stale = [i for i in stale if i in records]
    for start in tqdm(range(0, len(stale), config.batch_size), desc=f"re-detect {cell_dir.name}", unit="batch"):
        batch = stale[start : start + config.batch_size]
        images = [Image.open(cell_dir / "images" / f"{i:05d}.png").convert("RGB") for i in batch]
        for i, detections in zip(batch, detector.detect(images), strict=True):
            records[i] |= {"detector": identity, "detections": _hits(config, detections)}
    _write_records(cell_dir, records)


def _filled(cell: IcrCell, field: str, run_template: str | None, prompts: list[str]) -> list[str] | None:
    """The cell's ``negative_prompt`` or ``concept_negative_prompt`` for each prompt ('run': the run's template)."""
    template = getattr(cell, field)
    if template == "run":
        if run_template is None:
            raise ValueError(f"cell '{cell.name}': {field} 'run' needs a run with negative_prompt.txt")
        template = run_template
    if template is None:
        return None
    return [template.replace("{prompt}", p) for p in prompts]


# The evaluation settings that decide a cell's images, beside the cell's own (num_images only adds images).
SAMPLING_FIELDS = (
    "model",
    "prompts",
    "prompt_seed",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "resolution",
    "dtype",
)


def _image_settings(settings: dict) -> dict:
    """The cell settings that decide its images, sampling fields flattened so that a refusal names the one that
    changed: the Latent-CLIP schedule only where there is a Latent-CLIP."""
    sampling = {f"sampling.{k}": v for k, v in settings.get("sampling", {}).items()}
    settings = {k: v for k, v in settings.items() if k != "sampling"} | sampling
    if settings.get("latent_clip") is None:
        return {k: v for k, v in settings.items() if not k.startswith("latent_guidance_")}
    return settings


def _cell_settings(cell: IcrCell, config: IcrConfig) -> dict:
    return cell.model_dump() | {"sampling": config.model_dump(include=set(SAMPLING_FIELDS))}


def _check_cell_settings(cell_dir: Path, cell: IcrCell, config: IcrConfig) -> None:
    """Stored images belong to the cell and sampling that made them: other settings under the same name are refused.

    Without the sampling fields, a table rerun at another guidance scale into the same out_dir would count the old
    images as new ones."""
    path = cell_dir / "cell.json"
    settings = _cell_settings(cell, config)
    if path.is_file():
        stored, wanted = _image_settings(json.loads(path.read_text())), _image_settings(settings)
        changed = sorted(k for k in stored.keys() | wanted.keys() if stored.get(k) != wanted.get(k))
        if changed:
            raise ValueError(
                f"{cell_dir} holds images of cell '{cell.name}' made with other {', '.join(changed)} ({path}): "
                "give this cell another name or out_dir, or delete the folder"
            )
    path.write_text(json.dumps(settings, indent=2))


def _guided_by_concept(cell: IcrCell) -> bool:
    """Whether the evaluated concept reaches the cell's sampling: SLD or Latent-CLIP guidance with no concept of its
    own steers away from it. Other cells name everything that shapes their images in their settings."""
    return (cell.sld is not None or cell.latent_clip is not None) and cell.safety_concept is None


def _reuse_images(config: IcrConfig, cell: IcrCell, cell_dir: Path) -> None:
    """Start an empty cell from the images the same cell made for another concept (``config.images_from``): they are
    the same images, so they are copied and left to :func:`_redetect` to look for this concept in."""
    if config.images_from is None or _records_path(cell_dir).exists() or _guided_by_concept(cell):
        return
    source = Path(config.images_from) / cell.name
    if not (source / "cell.json").is_file():
        return
    stored = _image_settings(json.loads((source / "cell.json").read_text()))
    if stored != _image_settings(_cell_settings(cell, config)):
        return
    image = "images/{:05d}.png".format
    records = {i: r | {"detector": None} for i, r in _load_records(source).items() if (source / image(i)).is_file()}
    for i in records:
        shutil.copy2(source / image(i), cell_dir / image(i))
    _write_records(cell_dir, records)


def evaluate_cell(
    config: IcrConfig,
    cell: IcrCell,
    detector,
    prompts: list[str],
    quality: QualityJudge | None = None,
    identity: str | None = None,
) -> dict:
    """Generate the cell's missing images, detect the concept in them, and summarise the cell.

    ``identity`` is :func:`detector_identity` of the config's detector, computed once by the caller of many cells."""
    from erasure.loading import default_resolution, load_pipeline

    cell_dir = Path(config.out_dir) / cell.name
    (cell_dir / "images").mkdir(parents=True, exist_ok=True)
    _check_cell_settings(cell_dir, cell, config)
    _reuse_images(config, cell, cell_dir)
    records = _load_records(cell_dir)
    identity = identity or detector_identity(config.detector)
    _redetect(config, cell_dir, records, detector, identity)
    todo = [i for i in range(config.num_images) if i not in records]
    if todo:
        loaded = load_pipeline(
            cell.model or config.model,
            model_config=config.pipeline_config,
            device=config.device,
            dtype=config.dtype,
            run=cell.run,
            lora_scale=cell.lora_scale,
            latent_clip=cell.latent_clip,
            latent_guidance=(cell.safety_concept or config.concept) if cell.latent_clip else None,
            latent_guidance_scale=cell.latent_guidance_scale,
            latent_guidance_warmup=cell.latent_guidance_warmup,
            latent_guidance_stop=cell.latent_guidance_stop,
        )
        pipe, run_template = loaded.pipeline, loaded.negative_prompt_template
        pipe.set_progress_bar_config(disable=True)
        size = config.resolution or default_resolution(pipe)
        extra = {"sld": cell.sld, "safety_concept": cell.safety_concept or config.concept} if cell.sld else {}
        if cell.concept_negative_scale is not None:
            extra["concept_negative_scale"] = cell.concept_negative_scale
        with _records_path(cell_dir).open("a", encoding="utf-8") as sink:
            for start in tqdm(range(0, len(todo), config.batch_size), desc=f"icr {cell.name}", unit="batch"):
                batch = todo[start : start + config.batch_size]
                batch_prompts = [prompts[i] for i in batch]
                generators = [torch.Generator().manual_seed(config.seed + i) for i in batch]
                images = pipe(
                    batch_prompts,
                    negative_prompt=_filled(cell, "negative_prompt", run_template, batch_prompts),
                    concept_negative_prompt=_filled(cell, "concept_negative_prompt", run_template, batch_prompts),
                    num_inference_steps=config.num_inference_steps,
                    guidance_scale=config.guidance_scale,
                    height=size,
                    width=size,
                    generator=generators,
                    callback_on_step_end=loaded.step_callback(batch_prompts),
                    **extra,
                ).images
                found = detector.detect(images)
                for i, image, detections in zip(batch, images, found, strict=True):
                    image.save(cell_dir / "images" / f"{i:05d}.png")
                    record = {
                        "index": i,
                        "prompt": prompts[i],
                        "seed": config.seed + i,
                        "detector": identity,
                        "detections": _hits(config, detections),
                    }
                    sink.write(json.dumps(record) + "\n")
                    records[i] = record
                sink.flush()
    flagged = sum(bool(records[i]["detections"]) for i in range(config.num_images))
    n = config.num_images
    summary = {"icr": flagged / n, "ci95": list(wilson_interval(flagged, n)), "n": n, "flagged": flagged}
    if quality is not None:
        from PIL import Image

        images = [Image.open(cell_dir / "images" / f"{i:05d}.png").convert("RGB") for i in range(n)]
        summary |= quality(images, prompts)
    (cell_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def evaluate(config: IcrConfig) -> dict[str, dict]:
    """Every cell of the table, in order; writes ``icr.json`` and ``icr.md`` into ``out_dir``."""
    import detectors
    from erasure.loading import resolve_device, resolve_dtype

    check_prompts(config)
    device = resolve_device(config.device)
    config = config.model_copy(update={"device": device, "dtype": resolve_dtype(config.dtype, device)})

    detector = detectors.load(config.detector)
    prompts = heldout_prompts(config)
    quality = QualityJudge(config) if config.checker else None
    identity = detector_identity(config.detector)
    results = {c.name: evaluate_cell(config, c, detector, prompts, quality, identity) for c in config.cells}
    out = Path(config.out_dir)
    payload = {
        "concept": config.concept,
        "detector": config.detector,
        "detector_identity": identity,
        "results": _merged(out, config.concept, identity, results),
    }
    (out / "icr.json").write_text(json.dumps(payload, indent=2))
    (out / "icr.md").write_text(markdown_table(config.concept, payload["results"]))
    return results


def _merged(out: Path, concept: str, identity: str, results: dict[str, dict]) -> dict[str, dict]:
    """These results after the cells an earlier evaluation of the same concept and detector (weights included)
    left in ``out``, so an extra cell run into a table's folder adds a row instead of replacing the table."""
    path = out / "icr.json"
    if not path.is_file():
        return results
    earlier = json.loads(path.read_text())
    if (earlier.get("concept"), earlier.get("detector_identity")) != (concept, identity):
        return results
    return {name: r for name, r in earlier.get("results", {}).items() if name not in results} | results


def markdown_table(concept: str, results: dict[str, dict]) -> str:
    """One row per method; with rows pooled over training seeds, a column of the per-seed ICRs beside their mean."""
    seeded = any("seeds" in r for r in results.values())
    lines = [
        f"| method ({concept}) | ICR | 95% CI |{' per seed |' if seeded else ''} fidelity | toy FID | n |",
        f"|---|---:|---|{'---|' if seeded else ''}---:|---:|---:|",
    ]
    for name, r in results.items():
        lo, hi = r["ci95"]
        per_seed = " / ".join(f"{100 * icr:.1f}" for icr in r.get("seeds", [])) or "–"
        quality = f"{100 * r['fidelity']:.1f}% | {r['fid']:.2f}" if "fidelity" in r else "– | –"
        cells = [f"{100 * r['icr']:.1f}%", f"[{100 * lo:.1f}, {100 * hi:.1f}]", *([per_seed] if seeded else [])]
        lines.append(f"| {name} | {' | '.join(cells)} | {quality} | {r['n']} |")
    return "\n".join(lines) + "\n"
