"""Geom-Erasing training: ICD → cached latents → LoRA + location tokens → exported run directory.

Modules: ``data`` (dataset → examples), ``tokens`` (location tokens), ``models`` (pipeline parts, text
conditioning), ``loss`` (region-reweighted loss), ``loop`` (accelerate loop), ``validation`` (sample grids),
``export`` (run files).
"""

from erasure.training.loop import TrainResult, train

__all__ = ["TrainResult", "train"]
