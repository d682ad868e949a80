"""Stages 3-4: Geom-Erasing training, Safe Latent Diffusion, Latent-CLIP, evaluation."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from erasure.loading import load_pipeline
    from erasure.pipelines import SLDFluxPipeline, SLDPipeline, SLDSD3Pipeline, SLDXLPipeline
    from erasure.runs import Run, load_run
    from erasure.sld import SafetyConfig

__all__ = [
    "SLDPipeline",
    "SLDXLPipeline",
    "SLDSD3Pipeline",
    "SLDFluxPipeline",
    "SafetyConfig",
    "load_run",
    "Run",
    "load_pipeline",
]

# Imported on first use: `import erasure.config` (and the CLI's --help) should not pay for diffusers.
_LAZY = {
    "SLDPipeline": "erasure.pipelines",
    "SLDXLPipeline": "erasure.pipelines",
    "SLDSD3Pipeline": "erasure.pipelines",
    "SLDFluxPipeline": "erasure.pipelines",
    "SafetyConfig": "erasure.sld",
    "load_run": "erasure.runs",
    "Run": "erasure.runs",
    "load_pipeline": "erasure.loading",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'erasure' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
