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

from mobileprune_jax import groups, prox, transforms

__version__ = "0.1.0"

__all__ = ["groups", "prox", "transforms", "__version__"]
