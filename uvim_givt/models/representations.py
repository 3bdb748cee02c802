"""A GIVT's decoder activations as image features (the representation side: VIM, DiGIT).

``block_means`` runs the GIVT teacher-forced on a sequence (the VAE's codes of an image)
and returns, per decoder block, its output averaged over the sequence positions. A model
whose blocks are scanned (``scan=True``, the published layout: parameters stacked on axis
1) is read through the same model unscanned, with the stacks split into
``EncDecBlock<i>``, so the activations between blocks can be captured.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from uvim_givt.models.givt import GIVT, EncDecBlock


def unscanned(model: GIVT, params: Any) -> tuple[GIVT, Any]:
    """The model with its decoder blocks unrolled, and its parameters laid out to match."""
    if not model.scan:
        return model, params
    params = dict(params)
    decoder = dict(params["decoder"])
    stacked = decoder.pop("EncDecBlock")
    for i in range(model.num_decoder_layers):
        decoder[f"EncDecBlock{i}"] = jax.tree_util.tree_map(lambda x, i=i: x[:, i], stacked)
    params["decoder"] = decoder
    return dataclasses.replace(model, scan=False), params


def block_means(model: GIVT, params: Any, targets: jax.Array, *,
                labels: jax.Array | None = None, encoded: jax.Array | None = None,
                drop_labels: jax.Array | None = None,
                layers: Sequence[int] | None = None) -> dict[int, jax.Array]:
    """{block l (1-based): its output [B, E] averaged over positions} for ``layers``
    (default all), the GIVT reading ``targets`` [B, L, D] teacher-forced (causal) or
    with nothing masked (MaskGIT). Parameters must be unscanned (:func:`unscanned`)."""
    if model.scan:
        raise ValueError("unscan the model first (representations.unscanned)")
    wanted = range(1, model.num_decoder_layers + 1) if layers is None else layers
    input_mask = None
    if model.style == "masked":
        input_mask = jnp.zeros(targets.shape[:2], bool)
    _, state = model.apply(
        {"params": params}, targets, labels, encoded, input_mask, drop_labels,
        method=GIVT.decode, mutable=["intermediates"],
        capture_intermediates=lambda mdl, name: isinstance(mdl, EncDecBlock)
        and name == "__call__")
    captured = state["intermediates"]["decoder"]
    out = {}
    for layer in wanted:
        block_out = captured[f"EncDecBlock{layer - 1}"]["__call__"][0][0]  # (x, None)
        out[layer] = jnp.mean(block_out.astype(jnp.float32), axis=1)
    return out
