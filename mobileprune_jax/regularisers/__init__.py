"""Penalties over parameter pytrees with exact proximal operators (``Regulariser``).

A ``Regulariser`` holds ``ArrayLike`` coefficients (floats, arrays, traced values, or schedules of
the step count), applies its prox to a whole pytree at a step size — a scalar or per-coordinate
(a diagonal metric) — times a global multiplier, and becomes an optax transform
(``Regulariser.as_transform`` or ``transforms.with_prox``)::

    reg = regularisers.l0_sparse_group_lasso(l0=2e-4, neuron=2e-4, channel=1e-3, shape=1e-3)
    new_params = reg.prox(params, step_size=0.05)
"""

from mobileprune_jax.regularisers.base import Layout, LeafRule, Regulariser
from mobileprune_jax.regularisers.catalog import (
                                                  CONV_GROUPINGS,
                                                  SPARSE_GROUP,
                                                  elastic_group_lasso,
                                                  group_lasso,
                                                  l0,
                                                  l0_sparse_group_lasso,
                                                  l1,
                                                  l1_sparse_group_lasso,
                                                  l2,
                                                  sparse_group,
)
from mobileprune_jax.regularisers.subgradient import elastic_group_lasso_subgradient

__all__ = ["Regulariser", "Layout", "LeafRule", "CONV_GROUPINGS", "SPARSE_GROUP", "l0", "l1", "l2", "group_lasso",
           "l1_sparse_group_lasso", "l0_sparse_group_lasso", "elastic_group_lasso", "sparse_group",
           "elastic_group_lasso_subgradient"]
