"""Generate and judge I2P images as the reference evaluation does, sharded over processes and resumable.

    accelerate launch -m erasure.cli evaluate i2p --model DIR --sld medium --out outputs/i2p/sld-medium

Per prompt: ``calls`` pipeline calls of ``images_per_call`` images (2 × 5 in the paper) drawing from ONE generator
seeded with the row's seed, at guidance 7.5 or the row's own. Each process takes its share of the prompts by
index. A prompt is finished when its judgment file exists; images already on disk are judged, not regenerated,
so a killed run picks up where it stopped and never writes an image twice.

    out/run.json                  the method and settings (a resumed run must match them)
    out/images/00042/03.png       image 3 of prompt 42 (the prompt's row in the source)
    out/judgments/00042.json      every judge's verdict per image of prompt 42
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from PIL import Image
from tqdm.auto import tqdm

from erasure.evaluation.i2p.judges import Judge
from erasure.evaluation.i2p.metrics import PromptOutcome
from erasure.evaluation.i2p.prompts import I2PPrompt
from erasure.loading import LoadedPipeline, load_pipeline


@dataclass(frozen=True)
class Method:
    """What makes the images: a base model, optionally an SLD preset, a training run (LoRA, location tokens and
    its ``negative_prompt.txt``, applied as concept negation), a negative prompt of its own (diffusers'
    ``negative_prompt``; ``{prompt}`` is filled with each I2P prompt), and Latent-CLIP guidance away from a concept.

    A run's template holds the prompt (``{prompt}, nudity <loc_1_1>``): as diffusers' ``negative_prompt`` it would
    replace the unconditional branch and cancel the guidance towards the prompt, so it is pushed away from beside
    that guidance instead (``SLDPipeline(..., concept_negative_prompt=...)``), as ``erasure generate`` does."""

    name: str
    model: str
    sld: str | None = None
    run: str | None = None
    negative_prompt: str | None = None
    latent_clip: str | None = None
    latent_guidance: str | None = None


@dataclass(frozen=True)
class GenerationSettings:
    """The reference's sampling: 50 steps, 2 calls × 5 images, guidance 7.5 (``None``: each row's own)."""

    steps: int = 50
    guidance: float | None = 7.5
    calls: int = 2
    images_per_call: int = 5
    height: int | None = None
    width: int | None = None

    @property
    def images_per_prompt(self) -> int:
        return self.calls * self.images_per_call


def _write_atomic(path: Path, data: dict | Image.Image) -> None:
    """Write JSON or a PNG through a temporary file and rename, so a killed run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, Image.Image):
        data.save(tmp, format="PNG")
    else:
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _read_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


class I2PRun:
    """The files of one method's I2P run in ``out``."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)

    def image_paths(self, prompt: I2PPrompt, count: int) -> list[Path]:
        return [self.out / "images" / f"{prompt.id:05d}" / f"{k:02d}.png" for k in range(count)]

    def judgment_path(self, prompt: I2PPrompt) -> Path:
        return self.out / "judgments" / f"{prompt.id:05d}.json"

    def check_config(self, config: dict, *, record: bool = True) -> None:
        """Check that a resumed run uses the run's recorded config; a new run records it if ``record``.

        Every process checks (so all stop together on a mismatch); only the main process records.
        """
        path = self.out / "run.json"
        if path.is_file():
            recorded = json.loads(path.read_text(encoding="utf-8"))
            changed = sorted(key for key in config.keys() | recorded.keys() if config.get(key) != recorded.get(key))
            if changed:
                raise ValueError(
                    f"{path}: this run was made with other {', '.join(changed)} "
                    f"({', '.join(f'{k}={recorded.get(k)!r}' for k in changed)}); "
                    "use the same settings to resume, or another --out for a new run"
                )
        elif record:
            _write_atomic(path, config)

    def outcomes(self, prompts: Sequence[I2PPrompt]) -> list[PromptOutcome]:
        """The judged prompts among ``prompts``; raises if any is not judged yet."""
        missing = [p.id for p in prompts if not self.judgment_path(p).is_file()]
        if missing:
            raise RuntimeError(
                f"{self.out}: {len(missing)} prompts are not judged yet (ids {missing[:10]}...); run again to finish"
            )
        outcomes = []
        for prompt in prompts:
            verdicts = json.loads(self.judgment_path(prompt).read_text(encoding="utf-8"))["judges"]
            flags = {name: [v["flagged"] for v in per_image] for name, per_image in verdicts.items()}
            outcomes.append(PromptOutcome(prompt.id, prompt.prompt, prompt.categories, flags))
        return outcomes


def load_method_pipeline(method: Method, device: torch.device | str, dtype: str) -> LoadedPipeline:
    """The method's pipeline on ``device``, without diffusers' progress bars (the harness shows its own)."""
    loaded = load_pipeline(
        method.model,
        device=str(device),
        dtype=dtype,
        run=method.run,
        latent_clip=method.latent_clip,
        latent_guidance=method.latent_guidance,
    )
    loaded.pipeline.set_progress_bar_config(disable=True)
    return loaded


def generate(
    loaded: LoadedPipeline, prompt: I2PPrompt, method: Method, settings: GenerationSettings
) -> list[Image.Image]:
    """The reference's images of one prompt: every call draws from one generator seeded with the row's seed."""
    generator = torch.Generator(device=loaded.pipeline.device).manual_seed(prompt.seed)
    own_negative = method.negative_prompt
    kwargs = {
        "negative_prompt": None if own_negative is None else own_negative.replace("{prompt}", prompt.prompt),
        "concept_negative_prompt": loaded.negative_prompt(prompt.prompt),
        "num_images_per_prompt": settings.images_per_call,
        "num_inference_steps": settings.steps,
        "guidance_scale": prompt.guidance if settings.guidance is None else settings.guidance,
        "height": settings.height,
        "width": settings.width,
        "generator": generator,
        "sld": method.sld,
        "callback_on_step_end": loaded.step_callback(prompt.prompt, settings.images_per_call),
    }
    return [image for _ in range(settings.calls) for image in loaded.pipeline(prompt.prompt, **kwargs).images]


def process_state() -> PartialState:
    """accelerate's view of this process. Like ``Accelerator``, it honours ACCELERATE_USE_CPU (``--cpu``), which
    is what makes processes started by torchrun on a machine without GPUs shard the work instead of each doing all.
    """
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def run_i2p(
    prompts: Sequence[I2PPrompt],
    method: Method,
    judges: Sequence[Judge],
    out: str | Path,
    *,
    settings: GenerationSettings = GenerationSettings(),
    dtype: str = "float32",
) -> list[PromptOutcome] | None:
    """Generate and judge this process's share of ``prompts``; the main process returns every outcome."""
    state = process_state()
    run = I2PRun(out)
    config = {"method": asdict(method), "settings": asdict(settings), "judges": [j.name for j in judges]}
    run.check_config(config, record=state.is_main_process)
    state.wait_for_everyone()
    loaded = None
    with state.split_between_processes(list(prompts)) as share:
        todo = [p for p in share if not run.judgment_path(p).is_file()]
        for prompt in tqdm(todo, desc=f"I2P {method.name}", disable=not state.is_local_main_process):
            paths = run.image_paths(prompt, settings.images_per_prompt)
            if all(path.is_file() for path in paths):
                images = [_read_rgb(path) for path in paths]
            else:
                if loaded is None:
                    loaded = load_method_pipeline(method, state.device, dtype)
                images = generate(loaded, prompt, method, settings)
                for image, path in zip(images, paths, strict=True):
                    _write_atomic(path, image)
            record = {
                "id": prompt.id,
                "prompt": prompt.prompt,
                "process": state.process_index,
                "images": [str(path.relative_to(run.out)) for path in paths],
                "judges": {judge.name: judge.judge(images) for judge in judges},
            }
            _write_atomic(run.judgment_path(prompt), record)
    state.wait_for_everyone()
    return run.outcomes(prompts) if state.is_main_process else None
