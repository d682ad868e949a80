"""The toy world's models: the base model (``base``), the shape/colour checker (``checker``) and the demo (``demo``).

The scene generator they are trained and measured on is ``datasets_icd.toyworld``: the synthetic ICD source needs
it, and ``datasets_icd`` cannot import from ``erasure``.
"""
