"""Proximal operators of sparsity-inducing penalties, as pure JAX array functions.

Every operator here computes ``prox_{R}(y) = argmin_x ½‖x − y‖² + R(x)`` exactly and
returns exact zeros. The functions know nothing of Flax or optax: they act on arrays,
are jit-compiled, work in any floating dtype (half precision is computed in float32 and
cast back), and batch over leading axes.

Conventions:

* Element-wise operators (``hard_threshold``, ``soft_threshold``, ``ridge``) broadcast
  their coefficient against ``y``.
* Group operators (``group_soft_threshold``, ``l1_sgl``, ``pi``) treat the **last axis** as
  one group; their coefficients broadcast against ``y.shape[:-1]`` (one value per group).
* Tree operators (``theta``, ``tree_group_soft_threshold``, ``tree_l1_sgl``) take
  ``y`` of shape ``(..., L, F)``: ``L`` leaf groups of ``F`` members each, all under one
  root group made of the last two axes. Coefficients broadcast against ``y.shape[:-2]``
  (one value per tree).
* Ties go to zero: where keeping and dropping a group (or entry) give the same objective
  value, the result is zero.

Negative coefficients are rejected with a ``ValueError`` when they are concrete values;
traced coefficients (inside ``jit``) cannot be checked and must be non-negative.

``pi`` and ``theta`` sort only the groups their sort-free bounds leave ambiguous, with XLA's
sort on every backend: no host callback, whose presence would make the CPU runtime dispatch a
whole training step synchronously.

Modules: ``convex`` (ℓ1, ridge, group lasso, ℓ1-SGL, and the ℓ0 hard threshold), ``group_l0`` (π),
``tree_l0`` (θ), ``bracketing`` (the sort-free bounds π and θ share) and ``validation``.
Descriptive aliases: ``l0_sgl`` = ``pi``, ``tree_l0_sgl`` = ``theta``.
"""

from mobileprune_jax.prox.convex import (
                                         group_soft_threshold,
                                         hard_threshold,
                                         l1_sgl,
                                         ridge,
                                         soft_threshold,
                                         tree_group_soft_threshold,
                                         tree_l1_sgl,
)
from mobileprune_jax.prox.group_l0 import pi
from mobileprune_jax.prox.tree_l0 import theta

l0_sgl = pi  # prox of lam·‖x‖₂ + eta·‖x‖₀ per group (π)
tree_l0_sgl = theta  # prox of alpha·‖x‖₀ + beta·Σᵢ‖xᵢ‖₂ + gamma·‖x‖₂ per two-level tree (θ)

__all__ = [
    "hard_threshold",
    "soft_threshold",
    "ridge",
    "group_soft_threshold",
    "l1_sgl",
    "pi",
    "l0_sgl",
    "theta",
    "tree_l0_sgl",
    "tree_group_soft_threshold",
    "tree_l1_sgl",
]
