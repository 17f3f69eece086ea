"""A one-line error when a Flax linen module reaches an API that needs an ``nnx.Module``."""

from __future__ import annotations

from typing import Any

from flax import linen, nnx

SHRINK_ROUTE = ("linen modules fix their feature counts, so no smaller linen model can be rebuilt: port the model to "
                "flax.nnx (the same layer names give the same parameter paths; the regularisers in "
                "mobileprune_jax.transforms work on linen params as they are)")
EXPORT_ROUTE = ("wrap it first: model = nnx.bridge.ToNNX(module, rngs=nnx.Rngs(0)); "
                "nnx.bridge.lazy_init(model, sample_input) (then load your trained params with nnx.update)")


def require_nnx(model: Any, fn: str, route: str) -> None:
  """Raises TypeError (one line) unless ``model`` is an ``nnx.Module``."""
  if isinstance(model, nnx.Module):
    return
  is_linen = isinstance(model, linen.Module)
  kind = f"the flax.linen module {type(model).__name__}" if is_linen else f"a {type(model).__name__}"
  raise TypeError(f"{fn} takes a flax.nnx.Module, got {kind}; {route if is_linen else 'build the model with flax.nnx'}")
