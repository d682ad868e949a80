"""Stage 2: Implicit Concept Datasets — images with captions, concept existence and location tokens."""

from datasets_icd.features import ICD_FEATURES

__all__ = ["ICD_FEATURES"]
