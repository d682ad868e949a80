"""Stage 2: Implicit Concept Datasets — images with captions, concept existence and location tokens."""

from datasets_icd.features import ICD_FEATURES
from datasets_icd.toyworld import ToySample, ToyWorld, ToyWorldConfig

__all__ = ["ICD_FEATURES", "ToySample", "ToyWorld", "ToyWorldConfig"]
