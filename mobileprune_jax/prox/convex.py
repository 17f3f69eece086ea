"""Proximal operators of the convex penalties: ℓ1, ridge, group lasso, ℓ1-SGL (flat and two-level tree).

Also ``hard_threshold`` (ℓ0 on single entries), which needs no group machinery.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mobileprune_jax.prox.bracketing import shrink_factor
from mobileprune_jax.prox.validation import check_float, checked, coef, compute_dtype

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


@checked("alpha")
def hard_threshold(y: ArrayLike, alpha: ArrayLike) -> Array:
  """Prox of alpha·‖x‖₀: x = y·1[|y| > sqrt(2·alpha)] (ties go to zero).

  Args:
    y: input array (any shape, floating dtype).
    alpha: non-negative coefficient, broadcastable against ``y``.
  """
  y = check_float(y, 0, "hard_threshold")
  alpha = jnp.asarray(alpha, compute_dtype(y.dtype))
  keep = jnp.square(y.astype(alpha.dtype)) > 2 * alpha
  return jnp.where(keep, y, jnp.zeros_like(y))


@checked("alpha")
def soft_threshold(y: ArrayLike, alpha: ArrayLike) -> Array:
  """Prox of alpha·‖x‖₁: x = sign(y)·(|y| − alpha)_+.

  Args:
    y: input array (any shape, floating dtype).
    alpha: non-negative coefficient, broadcastable against ``y``.
  """
  y = check_float(y, 0, "soft_threshold")
  dt = compute_dtype(y.dtype)
  yc = y.astype(dt)
  out = jnp.sign(yc) * jnp.maximum(jnp.abs(yc) - jnp.asarray(alpha, dt), 0)
  return out.astype(y.dtype)


@checked("mu")
def ridge(y: ArrayLike, mu: ArrayLike) -> Array:
  """Prox of mu·‖x‖₂²: x = y / (1 + 2·mu).

  Args:
    y: input array (any shape, floating dtype).
    mu: non-negative coefficient, broadcastable against ``y``.
  """
  y = check_float(y, 0, "ridge")
  dt = compute_dtype(y.dtype)
  return (y.astype(dt) / (1 + 2 * jnp.asarray(mu, dt))).astype(y.dtype)


@checked("lam")
def group_soft_threshold(y: ArrayLike, lam: ArrayLike) -> Array:
  """Prox of lam·‖x‖₂ over the last axis: x = (1 − lam/‖y‖₂)_+ · y.

  Args:
    y: array of shape (..., n); each y[..., :] is one group.
    lam: non-negative coefficient, broadcastable against ``y.shape[:-1]``.
  """
  y = check_float(y, 1, "group_soft_threshold")
  dt = compute_dtype(y.dtype)
  lam = coef(lam, dt, y.shape[:-1], "group_soft_threshold", "lam")
  return group_shrink(y.astype(dt), lam).astype(y.dtype)


@checked("l1", "lam")
def l1_sgl(y: ArrayLike, l1: ArrayLike, lam: ArrayLike) -> Array:
  """Prox of l1·‖x‖₁ + lam·‖x‖₂ (ℓ1 sparse group lasso): group shrink of soft(y, l1).

  Args:
    y: array of shape (..., n); each y[..., :] is one group.
    l1: non-negative ℓ1 coefficient, broadcastable against ``y.shape[:-1]``.
    lam: non-negative group coefficient, broadcastable against ``y.shape[:-1]``.
  """
  y = check_float(y, 1, "l1_sgl")
  dt = compute_dtype(y.dtype)
  l1 = coef(l1, dt, y.shape[:-1], "l1_sgl", "l1")
  lam = coef(lam, dt, y.shape[:-1], "l1_sgl", "lam")
  yc = y.astype(dt)
  z = jnp.sign(yc) * jnp.maximum(jnp.abs(yc) - l1[..., None], 0)
  return group_shrink(z, lam).astype(y.dtype)


@checked("beta", "gamma")
def tree_group_soft_threshold(y: ArrayLike, beta: ArrayLike, gamma: ArrayLike) -> Array:
  """Prox of beta·Σᵢ‖xᵢ‖₂ + gamma·‖x‖₂ (two-level tree group lasso): leaf shrink, then root.

  Args:
    y: array of shape (..., L, F): L leaf groups y[..., i, :] under one root group.
    beta: non-negative leaf coefficient, broadcastable against ``y.shape[:-2]``.
    gamma: non-negative root coefficient, broadcastable against ``y.shape[:-2]``.
  """
  y = check_float(y, 2, "tree_group_soft_threshold")
  beta, gamma = tree_coefs(y, "tree_group_soft_threshold", beta=beta, gamma=gamma)
  return tree_shrink(y.astype(beta.dtype), beta, gamma).astype(y.dtype)


@checked("l1", "beta", "gamma")
def tree_l1_sgl(y: ArrayLike, l1: ArrayLike, beta: ArrayLike, gamma: ArrayLike) -> Array:
  """Prox of l1·‖x‖₁ + beta·Σᵢ‖xᵢ‖₂ + gamma·‖x‖₂: soft threshold → leaf shrink → root shrink.

  Args:
    y: array of shape (..., L, F): L leaf groups y[..., i, :] under one root group.
    l1: non-negative ℓ1 coefficient, broadcastable against ``y.shape[:-2]``.
    beta: non-negative leaf coefficient, broadcastable against ``y.shape[:-2]``.
    gamma: non-negative root coefficient, broadcastable against ``y.shape[:-2]``.
  """
  y = check_float(y, 2, "tree_l1_sgl")
  l1, beta, gamma = tree_coefs(y, "tree_l1_sgl", l1=l1, beta=beta, gamma=gamma)
  yc = y.astype(l1.dtype)
  z = jnp.sign(yc) * jnp.maximum(jnp.abs(yc) - l1[..., None, None], 0)
  return tree_shrink(z, beta, gamma).astype(y.dtype)


def group_shrink(y: Array, lam: Array) -> Array:
  """Block soft threshold along the last axis; lam has shape y.shape[:-1]."""
  norm = jnp.linalg.norm(y, axis=-1)
  return y * shrink_factor(norm, lam)[..., None]


def tree_shrink(z: Array, beta: Array, gamma: Array) -> Array:
  """Convex two-level tree prox: leaf group shrink (beta, one per tree or one per leaf), then root shrink (gamma)."""
  leaf = beta if beta.ndim == z.ndim - 1 else beta[..., None]
  z = group_shrink(z, jnp.broadcast_to(leaf, z.shape[:-1]))
  root = jnp.sqrt(jnp.sum(jnp.square(z), axis=(-2, -1)))
  return z * shrink_factor(root, gamma)[..., None, None]


def tree_coefs(y: Array, fn: str, **coefs: ArrayLike) -> tuple[Array, ...]:
  dt = compute_dtype(y.dtype)
  return tuple(coef(c, dt, y.shape[:-2], fn, name) for name, c in coefs.items())
