"""Stage 2: Implicit Concept Datasets — images with captions, concept existence and location tokens.

The HF ``datasets`` schema lives in ``datasets_icd.features``; it is not imported here, so the toy world (and the
toy base model's training, which needs nothing else) runs where ``datasets`` is not installed.
"""

from datasets_icd.toyworld import ToySample, ToyWorld, ToyWorldConfig

__all__ = ["ToySample", "ToyWorld", "ToyWorldConfig"]
