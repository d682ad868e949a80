"""One loader for every command: a hub id, a diffusers folder or a single ``.safetensors`` checkpoint → our pipeline.

    loaded = load_pipeline("stable-diffusion-v1-5/stable-diffusion-v1-5", run="outputs/RUN")
    loaded = load_pipeline("model.safetensors", model_config="path/to/diffusers-folder")   # offline single file
    image = loaded.pipeline("a photo", concept_negative_prompt=loaded.negative_prompt_template).images[0]

The family (SD 1.x/2.x, SDXL, SD3, FLUX) comes from ``model_index.json`` (of the folder, or of ``model_config``
for a single file), so nobody sets it by hand. A single file with no ``model_config`` asks diffusers to find its
config on the hub, which an offline machine cannot: the error says to pass ``model_config``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from erasure.runs import Run, load_run

if TYPE_CHECKING:
    from erasure.latent_clip import LatentClipGuidance

DTYPES = ("auto", "float32", "float16", "bfloat16")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# model_index.json's _class_name -> our pipeline class in erasure.pipelines
PIPELINES = {
    "StableDiffusionPipeline": "SLDPipeline",
    "StableDiffusionXLPipeline": "SLDXLPipeline",
    "StableDiffusion3Pipeline": "SLDSD3Pipeline",
    "FluxPipeline": "SLDFluxPipeline",
}


def resolve_device(device: str = "auto") -> str:
    """``auto`` is CUDA when a GPU is present, the CPU otherwise."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` is float16 on a GPU (what SD checkpoints are shared in) and float32 on the CPU."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype != "auto":
        return dtype
    return "float16" if device.startswith("cuda") else "float32"


def is_single_file(model: str | Path) -> bool:
    return str(model).endswith(SINGLE_FILE_SUFFIXES)


def model_index(model: str | Path, model_config: str | Path | None = None) -> dict[str, Any]:
    """The ``model_index.json`` that says which pipeline ``model`` is (its own, or ``model_config``'s)."""
    from diffusers import DiffusionPipeline

    source = model_config if model_config is not None else model
    if is_single_file(model) and model_config is None:
        return {"_class_name": _single_file_class(Path(model))}
    if model_config is not None and not Path(model_config).is_dir():
        raise FileNotFoundError(f"--model-config {model_config} is not a diffusers folder (with model_index.json)")
    if _looks_local(source) and not Path(source).is_dir():
        raise FileNotFoundError(f"model {source} does not exist (expected a diffusers folder, a hub id or a file)")
    return DiffusionPipeline.load_config(str(source))


def _looks_local(model: str | Path) -> bool:
    text = str(model)
    return text.startswith((".", "/", "~")) or Path(text).exists() or text.count("/") != 1


def _single_file_class(path: Path) -> str:
    """The pipeline class of a single checkpoint file, read from its keys as diffusers does."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    kind = infer_diffusers_model_type(load_single_file_checkpoint(str(path)))
    if kind.startswith("xl_"):
        return "StableDiffusionXLPipeline"
    if kind.startswith("sd3"):
        return "StableDiffusion3Pipeline"
    if kind.startswith("flux"):
        return "FluxPipeline"
    return "StableDiffusionPipeline"


def pipeline_class(index: dict[str, Any], model: str | Path) -> type:
    """Our SLD pipeline class for a ``model_index.json``."""
    import erasure.pipelines as pipelines

    name = index.get("_class_name", "")
    if name not in PIPELINES:
        if "unet" in index and "text_encoder" in index:  # a renamed SD-style pipeline (e.g. the safe one)
            name = "StableDiffusionXLPipeline" if "text_encoder_2" in index else "StableDiffusionPipeline"
        else:
            raise ValueError(
                f"{model}: model_index.json names {name or 'no pipeline'}; expected one of {', '.join(PIPELINES)}"
            )
    return getattr(pipelines, PIPELINES[name])


def from_pretrained_any(cls: type, model: str | Path, model_config: str | Path | None = None, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` for a folder or hub id, ``cls.from_single_file`` for a checkpoint file."""
    if not is_single_file(model):
        return cls.from_pretrained(str(model), **(_absent_components(model) | kwargs))
    if model_config is None:
        try:
            return cls.from_single_file(str(model), **kwargs)
        except OSError as err:  # diffusers fetches the config from the hub
            raise FileNotFoundError(
                f"{model}: the diffusers config of this checkpoint could not be found ({type(err).__name__}); "
                "offline, pass --model-config DIR (model.config in a recipe): a diffusers folder of the same "
                "architecture, e.g. the base model it was fine-tuned from"
            ) from err
    return cls.from_single_file(str(model), config=str(model_config), local_files_only=True, **kwargs)


def _absent_components(model: str | Path) -> dict[str, None]:
    """A local folder's components saved as absent (``[null, null]`` in ``model_index.json``), to pass as None:
    diffusers refuses such a folder otherwise, and SD3 saved without T5 (``text_encoder_3=None``, the usual way to
    run it in less memory) is one."""
    if not Path(model).is_dir():
        return {}
    index = model_index(model)
    return {name: None for name, value in index.items() if value == [None, None]}


def default_resolution(pipe: Any) -> int:
    """The image side a pipeline makes when none is asked for (UNet pipelines and transformer ones alike)."""
    if getattr(pipe, "unet", None) is not None:
        return pipe.unet.config.sample_size * pipe.vae_scale_factor
    return pipe.default_sample_size * pipe.vae_scale_factor


@dataclass
class LoadedPipeline:
    """A pipeline ready to sample, and the training run loaded into it."""

    pipeline: Any
    run: Run | None = None
    """the training run loaded into the pipeline; None without one."""
    guidance: LatentClipGuidance | None = None
    """Latent-CLIP safety guidance; None when not asked for. Pass :meth:`step_callback` to each call."""

    @property
    def negative_prompt_template(self) -> str | None:
        """the run's negative_prompt.txt, holding ``{prompt}``; None without a run or when the run has none."""
        return None if self.run is None else self.run.negative_prompt_template

    def step_callback(self, prompts: str | list[str], num_images_per_prompt: int = 1) -> Callable | None:
        """The ``callback_on_step_end`` of a call with these prompts: the guidance reads each image's caption."""
        return None if self.guidance is None else self.guidance.for_prompts(prompts, num_images_per_prompt)

    def negative_prompt(self, prompt: str) -> str | None:
        """The run's negative prompt for ``prompt``."""
        return None if self.run is None else self.run.negative_prompt(prompt)


def load_pipeline(
    model: str | Path,
    *,
    model_config: str | Path | None = None,
    device: str = "auto",
    dtype: str = "auto",
    run: str | Path | None = None,
    lora_scale: float = 1.0,
    latent_clip: str | Path | None = None,
    latent_guidance: str | None = None,
    latent_guidance_scale: float = 0.05,
    latent_guidance_warmup: int = 0,
    latent_guidance_stop: int | None = 8,
) -> LoadedPipeline:
    """Our SLD pipeline for ``model``, with a training run and Latent-CLIP guidance when asked for.

    With ``run`` (a training run directory) it also loads the run's LoRA or fine-tuned model and learned location
    tokens (:func:`erasure.load_run`). With ``latent_clip`` (a Latent-CLIP directory) and ``latent_guidance`` (a
    concept) the result carries guidance that steers sampling away from it. The NSFW safety checker is off:
    callers measure what the model makes, and a blacked-out image hides that.
    """
    import torch

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    cls = pipeline_class(model_index(model, model_config), model)
    options: dict[str, Any] = {"torch_dtype": getattr(torch, dtype)}
    if cls.__name__ == "SLDPipeline":
        options |= {"safety_checker": None, "requires_safety_checker": False}
    pipe = from_pretrained_any(cls, model, model_config, **options)
    loaded_run = load_run(pipe, run, lora_scale=lora_scale) if run is not None else None
    guidance = _latent_guidance(
        latent_clip, latent_guidance, latent_guidance_scale, latent_guidance_warmup, latent_guidance_stop, device
    )
    return LoadedPipeline(pipe.to(device), loaded_run, guidance)


def _latent_guidance(
    latent_clip: str | Path | None, concept: str | None, scale: float, warmup: int, stop: int | None, device: str
) -> LatentClipGuidance | None:
    if bool(latent_clip) != bool(concept):
        raise ValueError("latent-clip and latent-guidance go together: the model, and the concept to avoid")
    if not concept:
        return None
    from erasure.latent_clip import LatentClip, LatentClipGuidance

    model = LatentClip.from_pretrained(latent_clip).to(device).eval()
    return LatentClipGuidance(model, concept, scale=scale, warmup_steps=warmup, stop_step=stop)
