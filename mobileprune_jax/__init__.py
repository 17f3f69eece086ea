"""mobileprune_jax: proximal sparse regularisers that make networks physically smaller.

Modules, in the order data flows through them:

* ``prox``: exact proximal operators on arrays (ℓ0, ℓ1, ℓ2, group lasso, ℓ1-SGL,
  MobilePrune's π and θ).
* ``groups``: which parameter leaves are regularised and how they form groups.
* ``units``: given a traced model, the coupled units surgery removes together
  (``Regulariser.for_model`` builds its groups from them).
* ``regularisers``: penalties over pytrees with their exact prox.
* ``transforms``: the operators as ``optax.GradientTransformation``s.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

__all__ = ["groups", "prox", "transforms", "__version__"]


def __getattr__(name: str) -> Any:
  """Imports ``groups``, ``prox`` and ``transforms`` on first use, so ``python -m mobileprune_jax`` starts (and
  answers Ctrl-C) before JAX is loaded."""
  if name in ("groups", "prox", "transforms"):
    return importlib.import_module(f"mobileprune_jax.{name}")
  raise AttributeError(f"module 'mobileprune_jax' has no attribute {name!r}")
