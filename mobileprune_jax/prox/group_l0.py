"""π: the exact prox of lam·‖x‖₂ + eta·‖x‖₀ on each group (MobilePrune Algorithm 2).

``pi_bracketed`` (the sort-free path) and ``pi_sorted`` (the exact sort) are exported for tests
and benchmarks; use ``pi``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mobileprune_jax.prox.bracketing import bracket, settle_ambiguous, shrink_factor, sorted_stats, top_k_mask
from mobileprune_jax.prox.validation import check_float, checked, coef, compute_dtype

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


@checked("lam", "eta")
def pi(y: ArrayLike, lam: ArrayLike, eta: ArrayLike) -> Array:
  """Prox of lam·‖x‖₂ + eta·‖x‖₀ over the last axis (MobilePrune Algorithm 2).

  For support size k the best support is the k largest |y_j|, with value
  S_k = ½(s_k − lam)_+² − eta·k, s_k = ‖top-k of y‖₂; x keeps the top-k* entries,
  k* = argmax S_k, shrunk by (1 − lam/s_k*), and x = 0 if max S_k ≤ 0.

  Most groups are settled without sorting (``bracket``: the optimal support is
  {j : w*·y_j² ≥ eta} for a slope w* pinned between two cheap bounds); the rest are solved
  by the sort above.

  Args:
    y: array of shape (..., n); each y[..., :] is one group.
    lam: non-negative group coefficient, broadcastable against ``y.shape[:-1]``.
    eta: non-negative ℓ0 coefficient, broadcastable against ``y.shape[:-1]``.
  """
  y = check_float(y, 1, "pi")
  dt = compute_dtype(y.dtype)
  lam = coef(lam, dt, y.shape[:-1], "pi", "lam")
  eta = coef(eta, dt, y.shape[:-1], "pi", "eta")
  yc = y.astype(dt)
  flat = lambda a: a.reshape((-1,) + a.shape[y.ndim - 1:])
  x_fast, ambiguous = pi_bracketed(flat(yc), flat(lam), flat(eta))
  x = settle_ambiguous(x_fast, ambiguous, pi_sorted, (flat(yc), flat(lam), flat(eta)))
  return x.reshape(y.shape).astype(y.dtype)


def pi_bracketed(yc: Array, lam: Array, eta: Array) -> tuple[Array, Array]:
  """π where ``bracket`` settles it (no sort), and the mask of groups it leaves ambiguous."""
  sq = jnp.square(yc)

  def state(w, outer):  # each entry is a leaf of one member: kept iff w·y_j² ≥ eta (> for the inner bound)
    take = w[:, None] * sq >= eta[:, None] if outer else w[:, None] * sq > eta[:, None]
    leaf_h = jnp.where(take, sq, 0)
    return take, leaf_h, jnp.sum(leaf_h, -1), jnp.sum(take, -1).astype(yc.dtype)

  take, big_h, ambiguous, zero = bracket(state, jnp.sum(sq, -1), eta, lam)
  scale = jnp.where(zero, 0, shrink_factor(jnp.sqrt(big_h), lam))
  return jnp.where(take, yc * scale[..., None], 0), ambiguous


def pi_sorted(yc: Array, lam: Array, eta: Array) -> Array:
  """π by sorting each group: the score S_k of every support size k, then the best k."""
  n = yc.shape[-1]
  a_sorted, s = sorted_stats(yc)
  k = jnp.arange(n + 1, dtype=yc.dtype)
  score = 0.5 * jnp.square(jnp.maximum(s - lam[..., None], 0)) - eta[..., None] * k
  k_best = jnp.argmax(score, axis=-1)  # first maximum: smallest k; score[0] = 0
  s_best = jnp.take_along_axis(s, k_best[..., None], axis=-1)[..., 0]
  keep = top_k_mask(jnp.abs(yc), a_sorted, k_best)
  scale = shrink_factor(s_best, lam)
  return jnp.where(keep, yc * scale[..., None], 0)
