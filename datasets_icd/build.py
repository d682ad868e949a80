"""Build an Implicit Concept Dataset: read a source, annotate each image, write the location-token captions.

    icd build --source synthetic --num-images 2000 --out outputs/icd
    accelerate launch -m datasets_icd.cli build --source folder:photos --detectors qr ocr --out outputs/icd
    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m datasets_icd.cli build --num-images 9000 --out x

The source is cut into chunks of consecutive indices. A chunk is written to ``OUT/work`` as a parquet file and
then a small JSON marker, each by an atomic rename, so a build killed at any moment leaves only whole chunks;
``--resume`` redoes exactly the chunks without a marker, and every image ends up in the dataset once. Chunks are
spread over ``--num-proc`` worker processes and, under ``accelerate launch``, over processes and machines by
chunk number (``OUT`` must then be on a shared filesystem); the main process joins them at the end into
``OUT/dataset`` (``save_to_disk``), ``OUT/data/*.parquet``, ``OUT/report.md`` + ``.png`` and ``OUT/build.json``.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
from datasets import Dataset
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from datasets_icd.features import ICD_FEATURES
from datasets_icd.geometry import DEFAULT_CAPTION_TEMPLATE, DEFAULT_CONCEPT_TEMPLATE, DEFAULT_GRID, geom_caption
from datasets_icd.paste import PasteConfig
from datasets_icd.report import write_report
from datasets_icd.sources import PastedSource, SkippedItem, Source, SourceItem, open_source
from datasets_icd.toyworld import ToyWorldConfig

SHARD_BYTES = 500 * 2**20  # parquet shard size, as the hub's own uploads cut them


class BuildConfig(BaseModel):
    """What decides the rows of a build; a resumed build must have the same one (``OUT/work/config.json``)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field("synthetic", description="synthetic, folder:PATH or hf:NAME")
    num_images: int | None = Field(None, ge=1, description="images to take (toy world size; the first N otherwise)")
    concepts: list[str] | None = Field(None, description="concepts kept in the annotations; all when None")
    detectors: list[str] = Field(default_factory=list, description="detector specs; none = the source's truth")
    grid: int = Field(DEFAULT_GRID, ge=1, description="location tokens form a grid x grid lattice")
    phrases: dict[str, str] = Field(default_factory=dict, description="concept -> existence phrase in captions")
    concept_template: str = DEFAULT_CONCEPT_TEMPLATE
    caption_template: str = DEFAULT_CAPTION_TEMPLATE
    toy: ToyWorldConfig = Field(default_factory=ToyWorldConfig, description="the toy world, for synthetic")
    paste: PasteConfig | None = Field(None, description="concepts pasted onto a folder's or dataset's images")
    captioner: str | None = Field(None, description="local image-captioning model folder for uncaptioned images")
    image_column: str = "image"
    caption_column: str | None = None
    split: str = "train"
    chunk_size: int = Field(200, ge=1, description="images per resumable unit of work")
    batch_size: int = Field(16, ge=1, description="images per detector call")


class Annotator:
    """Per image, the ``{name, score, box}`` records of the kept concepts, boxes clipped to the image.

    Detectors load on first use, so each worker process loads its own (ONNX and torch sessions do not
    survive a fork) and a ground-truth build never imports a detector backend.
    """

    def __init__(self, specs: list[str], concepts: list[str] | None) -> None:
        self.specs = specs
        self.concepts = set(concepts) if concepts is not None else None
        self._detectors: list | None = None

    def __call__(self, items: list[SourceItem]) -> list[list[dict]]:
        if self.specs:
            if self._detectors is None:
                import detectors

                self._detectors = [detectors.load(spec) for spec in self.specs]
            found: list[list[dict]] = [[] for _ in items]
            for detector in self._detectors:
                for records, detections in zip(found, detector.detect([it.image for it in items]), strict=True):
                    records.extend(d.as_record() for d in detections)
        else:
            found = [item.concepts or [] for item in items]
        return [self._keep(records, *item.image.size) for records, item in zip(found, items, strict=True)]

    def _keep(self, records: list[dict], width: int, height: int) -> list[dict]:
        kept = []
        for record in records:
            x0, y0, x1, y1 = record["box"]
            box = [max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)]
            if (self.concepts is None or record["name"] in self.concepts) and box[0] < box[2] and box[1] < box[3]:
                kept.append({"name": record["name"], "score": float(record["score"]), "box": box})
        return kept


class Captioner:
    """Captions for the images that came without one, from a transformers image-captioning model in a local folder
    (a VisionEncoderDecoder such as ViT-GPT2, or BLIP): ``local_files_only``, so nothing is downloaded. Loaded on
    first use, like the detectors, so each worker process loads its own."""

    def __init__(self, model_dir: str, max_new_tokens: int = 30) -> None:
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise FileNotFoundError(f"captioner {self.model_dir}: not a folder (give a save_pretrained model folder)")
        self.max_new_tokens = max_new_tokens
        self._parts: tuple | None = None

    def __call__(self, images: list) -> list[str]:
        import torch

        if self._parts is None:
            from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

            where = {"pretrained_model_name_or_path": self.model_dir, "local_files_only": True}
            self._parts = (
                AutoImageProcessor.from_pretrained(**where),
                AutoTokenizer.from_pretrained(**where),
                AutoModelForImageTextToText.from_pretrained(**where).eval(),
            )
        processor, tokenizer, model = self._parts
        pixels = processor(images=[image.convert("RGB") for image in images], return_tensors="pt").pixel_values
        with torch.no_grad():
            ids = model.generate(pixel_values=pixels.to(model.dtype), max_new_tokens=self.max_new_tokens)
        return [text.strip() for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


class ChunkBuilder:
    """Turns a range of source indices into one parquet chunk and its marker: the unit of work and of resume."""

    def __init__(self, config: BuildConfig, work: Path) -> None:
        self.config = config
        self.work = work
        self.source: Source = make_source(config)
        self.annotate = Annotator(config.detectors, config.concepts)
        self.captioner = Captioner(config.captioner) if config.captioner else None

    def chunks(self) -> list[tuple[int, int]]:
        total = min(len(self.source), self.config.num_images or len(self.source))
        size = self.config.chunk_size
        return [(start, min(start + size, total)) for start in range(0, total, size)]

    def marker(self, start: int) -> Path:
        return self.work / f"chunk-{start:09d}.json"

    def build(self, bounds: tuple[int, int]) -> int:
        start, stop = bounds
        rows, skipped = [], []
        for batch_start in range(start, stop, self.config.batch_size):
            items = []
            for index in range(batch_start, min(batch_start + self.config.batch_size, stop)):
                try:
                    items.append(self.source.load(index))
                except SkippedItem as reason:
                    skipped.append({"item": self.source.source_id(index), "reason": str(reason)})
            uncaptioned = [item for item in items if not item.caption.strip()]
            if self.captioner and uncaptioned:
                for item, caption in zip(uncaptioned, self.captioner([it.image for it in uncaptioned]), strict=True):
                    item.caption = caption
            rows.extend(self._row(item, records) for item, records in zip(items, self.annotate(items), strict=True))
        name = f"chunk-{start:09d}.parquet"
        if rows:
            table = Dataset.from_list(rows, features=ICD_FEATURES).data.table
            _atomic_write(self.work / name, lambda tmp: pq.write_table(table, tmp))
        marker = {"start": start, "stop": stop, "rows": len(rows), "file": name if rows else None, "skipped": skipped}
        _atomic_write(self.marker(start), lambda tmp: tmp.write_text(json.dumps(marker, ensure_ascii=False)))
        return stop - start

    def _row(self, item: SourceItem, records: list[dict]) -> dict:
        width, height = item.image.size
        caption = geom_caption(
            item.caption,
            records,
            width,
            height,
            self.config.grid,
            self.config.phrases,
            self.config.concept_template,
            self.config.caption_template,
        )
        buffer = io.BytesIO()
        item.image.save(buffer, format=item.image_format, **({"quality": 95} if item.image_format == "JPEG" else {}))
        return {
            "image": {"bytes": buffer.getvalue(), "path": None},
            "caption": item.caption,
            "geom_caption": caption,
            "concepts": records,
            "width": width,
            "height": height,
            "source_id": item.source_id,
        }


def make_source(config: BuildConfig) -> Source:
    source = open_source(
        config.source, config.num_images, config.toy, config.image_column, config.caption_column, config.split
    )
    return PastedSource(source, config.paste) if config.paste else source


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary name and rename: a reader (or a resume) sees the whole file or none of it."""
    tmp = path.with_name(f".{path.name}.{multiprocessing.current_process().pid}.tmp")
    write(tmp)
    tmp.replace(path)


_WORKER: ChunkBuilder | None = None


def _init_worker(config: BuildConfig, work: Path) -> None:
    global _WORKER
    _WORKER = ChunkBuilder(config, work)


def _build_in_worker(bounds: tuple[int, int]) -> int:
    assert _WORKER is not None, "worker not initialised"
    return _WORKER.build(bounds)


def build(config: BuildConfig, out: str | Path, num_proc: int = 1, resume: bool = False) -> dict:
    """Run (or resume) a build into ``out`` and return its summary (also written to ``out/build.json``)."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    real = config.source.startswith(("folder:", "hf:"))
    if config.paste and not real:
        raise ValueError(f"--paste needs real images: use a folder:PATH or hf:NAME source, not '{config.source}'")
    if real and not config.detectors and not config.paste:
        raise ValueError(
            f"source '{config.source}' has no ground truth: name detectors with --detectors, or paste concepts with "
            "--paste"
        )
    out = Path(out)
    work = out / "work"
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # PartialState skips that flag by itself
    if state.is_main_process:
        _prepare(config, out, work, resume)
    state.wait_for_everyone()

    builder = ChunkBuilder(config, work)
    chunks = builder.chunks()
    mine = chunks[state.process_index :: state.num_processes]
    pending = [c for c in mine if not builder.marker(c[0]).exists()]
    done_items = sum(stop - start for start, stop in mine) - sum(stop - start for start, stop in pending)
    with tqdm(
        total=sum(stop - start for start, stop in mine),
        initial=done_items,
        desc=f"icd build [{state.process_index}]" if state.num_processes > 1 else "icd build",
        unit="img",
        disable=not pending,
    ) as progress:
        if num_proc > 1 and len(pending) > 1:
            with multiprocessing.Pool(num_proc, initializer=_init_worker, initargs=(config, work)) as pool:
                for count in pool.imap_unordered(_build_in_worker, pending):
                    progress.update(count)
        else:
            for bounds in pending:
                progress.update(builder.build(bounds))
    state.wait_for_everyone()
    summary = _finish(config, out, work, builder) if state.is_main_process else {}
    state.wait_for_everyone()
    return summary


def _prepare(config: BuildConfig, out: Path, work: Path, resume: bool) -> None:
    """Start a fresh build, or check that a resumed one has the same config; clear half-written files."""
    saved = work / "config.json"
    current = config.model_dump(mode="json")
    if resume and saved.exists():
        previous = json.loads(saved.read_text(encoding="utf-8"))
        changed = sorted(k for k in current.keys() | previous.keys() if current.get(k) != previous.get(k))
        if changed:
            raise ValueError(
                f"{out} was built with different settings ({', '.join(changed)}): resume with the same options, "
                f"or build into a new --out"
            )
    elif resume and (out / "build.json").exists():
        raise ValueError(f"{out} holds a finished build: nothing to resume (build into a new --out to redo it)")
    elif not resume and (saved.exists() or (out / "build.json").exists()):
        raise ValueError(f"{out} already holds a build: pass --resume to continue it, or choose a new --out")
    work.mkdir(parents=True, exist_ok=True)
    for tmp in work.glob(".*.tmp"):
        tmp.unlink()
    if not saved.exists():
        saved.write_text(json.dumps(current, indent=2, ensure_ascii=False), encoding="utf-8")


def _replace_dir(target: Path, write: Callable[[Path], object]) -> None:
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def _save_dataset_into(out: Path, dataset: Dataset) -> None:
    """``save_to_disk`` into ``out`` itself, beside the report, so ``load_from_disk(out)`` opens the build."""
    tmp = out / ".dataset.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    dataset.save_to_disk(tmp)
    for old in out.glob("data-*.arrow"):
        old.unlink()
    for item in tmp.iterdir():
        item.replace(out / item.name)
    tmp.rmdir()


def _write_parquet_shards(dataset: Dataset, folder: Path) -> None:
    folder.mkdir(parents=True)
    num_shards = max(1, -(-dataset.data.nbytes // SHARD_BYTES))
    for index in range(num_shards):
        shard = dataset.shard(num_shards, index, contiguous=True)
        shard.to_parquet(folder / f"train-{index:05d}-of-{num_shards:05d}.parquet")


def _finish(config: BuildConfig, out: Path, work: Path, builder: ChunkBuilder) -> dict:
    """Join the chunks in index order into the dataset, its parquet shards, the report and ``build.json``."""
    markers = []
    for start, stop in builder.chunks():
        path = builder.marker(start)
        if not path.exists():
            raise RuntimeError(f"chunk {start}-{stop} is missing from {work}: rerun the same command with --resume")
        markers.append(json.loads(path.read_text(encoding="utf-8")))
    files = [str(work / m["file"]) for m in markers if m["file"]]
    if files:
        dataset = Dataset.from_parquet(files, features=ICD_FEATURES, cache_dir=str(work / "cache"))
    else:
        dataset = Dataset.from_list([], features=ICD_FEATURES)
    ids = dataset["source_id"]
    if len(set(ids)) != len(ids):
        raise RuntimeError(f"{work} holds an image twice: delete {out} and build again")

    _save_dataset_into(out, dataset)
    _replace_dir(out / "parquet", lambda tmp: _write_parquet_shards(dataset, tmp))
    skipped = [{"item": item, "reason": reason} for item, reason in builder.source.skipped]
    skipped += [entry for marker in markers for entry in marker["skipped"]]
    stats = write_report(dataset, out, skipped, config.grid, title=f"Implicit Concept Dataset from {config.source}")
    summary = {"config": config.model_dump(mode="json"), "rows": len(dataset), "skipped": skipped, **stats}
    (out / "build.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    shutil.rmtree(work)
    return summary
