"""SD3 without T5, run as what it is: the text stream's zero rows as one row, for training and sampling alike.

SD3 without its T5 encoder (``text_encoder_3=None``, diffusers' way to save its memory) is conditioned on the CLIP
states followed by ``max_sequence_length`` (256) zero rows. Those rows enter as one identical token and stay identical
through every block (SD3 gives text no position), so ``count`` copies in softmax attention equal one copy whose logit
is raised by ``log(count)``: one zero row under that bias gives the same result, forward and backward, at a fraction
of the cost for a small model, wherever the zero row is the last key of every attention
(:func:`last_key_is_the_zero_row`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F


@contextlib.contextmanager
def last_key_repeated(count: int) -> Iterator[None]:
    """Attention reads its last key and value as if they stood ``count`` times.

    It wraps ``F.scaled_dot_product_attention`` for the length of the block, which diffusers' joint attention calls
    without a mask; every other attention inside the block (a text encoder's, a VAE's) would be biased too, so the
    block must hold the transformer's forward alone (:func:`transformer_with_last_key_repeated`).
    """
    plain = F.scaled_dot_product_attention

    def biased(query, key, value, attn_mask=None, **options):
        bias = key.new_zeros(1, key.shape[-2])  # broadcast over batch, heads and queries
        bias[:, -1] = math.log(count)
        return plain(query, key, value, attn_mask=bias if attn_mask is None else attn_mask + bias, **options)

    F.scaled_dot_product_attention = biased
    try:
        yield
    finally:
        F.scaled_dot_product_attention = plain


def last_key_is_the_zero_row(transformer: torch.nn.Module) -> bool:
    """Whether every attention of ``transformer`` is joint (image keys, then text keys: the last is the last zero
    row). SD3.5 Medium's second, image-only attention (``dual_attention_layers``) would have an image token biased,
    so such a model keeps its zero rows."""
    return not getattr(transformer.config, "dual_attention_layers", ())


@contextlib.contextmanager
def transformer_with_last_key_repeated(transformer: torch.nn.Module, count: int) -> Iterator[None]:
    """Every forward of ``transformer`` inside the block runs under :func:`last_key_repeated` (``count``); its
    hooks run as before, outside the bias. A forward set on the instance (accelerate's offload hooks put theirs
    there) is put back on leaving."""
    own = vars(transformer).get("forward")
    forward = transformer.forward

    def biased_forward(*args, **kwargs):
        with last_key_repeated(count):
            return forward(*args, **kwargs)

    transformer.forward = biased_forward
    try:
        yield
    finally:
        if own is None:
            del transformer.forward  # the class's forward again
        else:
            transformer.forward = own
