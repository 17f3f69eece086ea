"""The sort-free bracketing shared by π and θ, and the sorting helpers of their exact paths (internal).

``bracket`` settles max_S Φ(H_S) − alpha·K_S for the groups where two cheap bounds on the optimal
slope agree; ``settle_ambiguous`` solves the rest exactly, chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def bracket(state: Callable, h_total: Array, alpha: Array, gamma: Array) -> tuple[Array, Array, Array, Array]:
  """Solves max_S Φ(H_S) − alpha·K_S without sorting, for the groups where two bounds agree.

  S is a support (a set of entries, grouped in leaves), H_S its value (a sum of per-leaf h) and
  K_S its size. Φ is convex, so an optimum S* also maximises the linearisation w*·H_S − alpha·K_S
  at w* = Φ'(H*) (docs/algorithms.md §C.2), and the maximisers of the linearisation grow with w. Two bounds pin
  w*: w* ≤ Φ'(H_all) = w_hi, and a feasible support's gain G_ref ≤ G* gives
  Φ(H*) ≥ G_ref + alpha·K_lo, so w* ≥ w_lo (I_lo: a support inside every maximiser at w_lo, hence
  inside S*; the bound is then tightened once with its H and K). If that inner support at w_lo
  equals a support O_hi containing every maximiser at w_hi, then I_lo ⊆ S* ⊆ O_hi: O_hi is S*, or
  x = 0 if its gain is ≤ 0. If even Φ(H of O_hi) − alpha·K_lo ≤ 0, x = 0. Otherwise the group is
  ambiguous. The bounds are widened by 1024·eps (relative) against rounding, which only makes
  more groups ambiguous.

  Args:
    state: (w, outer) ↦ (selection, per-leaf h, H, K) of a support containing every maximiser of
      w·H − alpha·K (outer=True) or contained in every one (outer=False), per group; w has the
      group shape; per-leaf h has shape (groups, leaves), the selection the same or with one
      more axis (the leaves' entries).
    h_total: H of all entries, an upper bound on any H_S, per group.
    alpha, gamma: ℓ0 and root coefficients, per group.

  Returns:
    (selection, H) of the outer support at w_hi, the masks ``ambiguous`` and ``zero`` (x = 0), per group,
    and the selection of the inner support at w_lo: every optimum S* lies between the two
    (I_lo ⊆ S* ⊆ O_hi), so an ambiguous group's exact solve only ranks the entries in between.
  """
  rel = 1024 * float(np.finfo(h_total.dtype).eps)
  up, down = 1 + rel, 1 - rel
  w_hi = phi_slope(h_total * up, gamma) * up
  sel_hi, leaf_hi, h_hi, k_hi = state(w_hi, True)
  phi_hi = phi(h_hi, gamma)
  gain = phi_hi - alpha * k_hi
  g_ref = gain - rel * (phi_hi + alpha * k_hi)  # a lower bound on that support's gain, so on G*
  w_lo = jnp.minimum(slope_floor(g_ref, gamma), w_hi)
  _, _, h_lo, k_lo = state(w_lo * down, False)
  w_lo = jnp.maximum(w_lo, jnp.maximum(phi_slope(h_lo * down, gamma), slope_floor(g_ref + alpha * k_lo * down, gamma)))
  w_lo = jnp.minimum(w_lo, w_hi)
  sel_lo, leaf_lo, _, k_lo = state(w_lo * down, False)
  same_sel = jnp.all(sel_lo == sel_hi, axis=tuple(range(leaf_hi.ndim, sel_hi.ndim)))
  same = same_sel | ((alpha[..., None] == 0) & (leaf_lo == leaf_hi))  # alpha = 0: zeros kept or not, same x
  settled = jnp.all(same, axis=-1)
  zero = (phi_hi * up - alpha * k_lo * down <= 0) | (settled & (gain <= 0))
  return sel_hi, h_hi, ~settled & ~zero, zero, sel_lo


def settle_ambiguous(x_fast: Array, ambiguous: Array, exact: Callable, args: tuple[Array, ...]) -> Array:
  """x_fast with the groups marked ambiguous (axis 0) replaced by ``exact(*args)`` on them.

  The ambiguous groups are gathered in chunks of 1/64 of all groups and solved chunk by
  chunk, so ``exact`` costs in proportion to how many there are (nothing when none is) and
  is compiled once.
  """
  groups = ambiguous.shape[0]
  if groups == 0:
    return x_fast
  chunk = max(1, groups // 64)

  def solve_chunk(carry):
    x, todo = carry
    idx = jnp.nonzero(todo, size=chunk, fill_value=0)[0]  # padding repeats group 0: solved exactly too
    return x.at[idx].set(exact(*(a[idx] for a in args))), todo.at[idx].set(False)

  return jax.lax.while_loop(lambda carry: jnp.any(carry[1]), solve_chunk, (x_fast, ambiguous))[0]


def phi(big_h: Array, gamma: Array) -> Array:
  """Φ(H) = ½(√H − gamma)_+²: what a support of (leaf-shrunk) squared norm H gains under a root shrink."""
  return 0.5 * jnp.square(jnp.maximum(jnp.sqrt(big_h) - gamma, 0))


def phi_slope(big_h: Array, gamma: Array) -> Array:
  """Φ'(H) = ½(1 − gamma/√H)_+ (0 where √H ≤ gamma); non-decreasing in H."""
  root = jnp.sqrt(big_h)
  return jnp.where(root > gamma, 0.5 * (1 - gamma / jnp.where(root > 0, root, 1)), 0)


def slope_floor(gain: Array, gamma: Array) -> Array:
  """Least Φ'(H) over all H with Φ(H) ≥ gain: ½(1 − gamma/(gamma + √(2·gain))), 0 where gain ≤ 0."""
  root = gamma + jnp.sqrt(2 * jnp.maximum(gain, 0))
  return jnp.where(gain > 0, 0.5 * (1 - gamma / jnp.where(root > 0, root, 1)), 0)


def shrink_factor(norm: Array, lam: Array) -> Array:
  """(1 − lam/‖·‖)_+ with 0/0 → 0 and norm == lam → 0."""
  safe = jnp.where(norm > 0, norm, 1)
  return jnp.where(norm > lam, 1 - lam / safe, 0)


def sorted_stats(y: Array) -> tuple[Array, Array]:
  """|y| sorted in descending order and its prefix norms (last axis).

  Returns:
    a_sorted: |y| in descending order, shape (..., n).
    s: s[..., k] = ‖top-k entries of y‖₂ for k = 0..n (shape (..., n + 1), s[..., 0] = 0).
  """
  a_sorted = jnp.flip(sort_nonnegative(jnp.abs(y)), -1)
  sums = cumsum(jnp.square(a_sorted))
  return a_sorted, jnp.sqrt(jnp.concatenate([jnp.zeros(y.shape[:-1] + (1,), sums.dtype), sums], axis=-1))


def as_ordered_int(x: Array) -> Array:
  """The bit patterns of non-negative floats (+0 … +inf) as integers of the same width: the same order."""
  return jax.lax.bitcast_convert_type(x, jnp.dtype(f"int{8 * jnp.dtype(x.dtype).itemsize}"))


def sort_nonnegative(x: Array) -> Array:
  """Ascending sort of non-negative floats along the last axis, as integers (``as_ordered_int``).

  Same result as ``jnp.sort``; a single-operand integer sort runs several times faster on CPU than a
  float one (XLA's float comparator orders NaNs and signed zeros).
  """
  keys = jax.lax.sort(as_ordered_int(x), dimension=x.ndim - 1, is_stable=False)
  return jax.lax.bitcast_convert_type(keys, x.dtype)


def top_k_mask(a: Array, a_sorted: Array, k: Array) -> Array:
  """Mask of exactly k[...] largest entries of a ≥ 0 along the last axis.

  Entries tied with the k-th largest value are taken first-come along the axis, so the
  mask never holds more than k entries (ties matter: keeping one more tied entry changes
  the objective).
  """
  kth = jnp.take_along_axis(a_sorted, jnp.maximum(k - 1, 0)[..., None], axis=-1)
  above = a > kth
  tied = a == kth
  room = k[..., None] - jnp.sum(above, axis=-1, keepdims=True)
  too_many_tied = jnp.any((jnp.sum(tied, axis=-1, keepdims=True) > room) & (k[..., None] > 0))
  keep = jax.lax.cond(too_many_tied,  # rare (exact ties at the cut): rank the tied entries
                      lambda: above | (tied & (count_along(tied) <= room)),
                      lambda: above | tied)
  return keep & (k[..., None] > 0)


def count_along(mask: Array) -> Array:
  """Inclusive running count of True entries along the last axis (int32).

  The triangular-matmul ``cumsum`` in float32 is exact for counts below 2²⁴ and compiles in a fraction
  of an associative scan's time (0.1 vs 0.8 s); longer axes fall back to ``jnp.cumsum``.
  """
  if mask.shape[-1] < 2 ** 24:
    return jnp.round(cumsum(mask.astype(jnp.float32))).astype(jnp.int32)
  return jnp.cumsum(mask.astype(jnp.int32), axis=-1)


SHORT_SCAN = 256  # longest axis ``scan`` reduces over one triangular mask; longer axes go block by block
SCAN_BLOCK = 32  # block length of a long ``scan``


def scan(op, x: Array, reverse: bool = False) -> Array:
  """Inclusive running max or min (``op`` is ``jnp.maximum`` or ``jnp.minimum``) along the last axis.

  An axis of at most ``SHORT_SCAN`` entries is reduced over a triangular mask, y_k = max_{j ≤ k} x_j (n² work in
  one kernel). A longer axis is cut into blocks of ``SCAN_BLOCK``: the running max within each block (a mask),
  then that of the blocks' maxima (recursively), combined: y_k = max(within-block y_k, max of earlier blocks).
  Both compile to a few kernels, where the log-depth ``jax.lax.associative_scan`` is ~4·log₂ n slices and pads
  that XLA compiles one by one (on CPU a 513-wide θ sweep compiled in 1.3 s that way). The associative scan is
  kept for arrays whose masked blocks would exceed 2²⁴ entries.
  """
  if op is jnp.maximum:
    reduce, fill = jnp.max, _extreme(x.dtype, low=True)
  elif op is jnp.minimum:
    reduce, fill = jnp.min, _extreme(x.dtype, low=False)
  else:
    raise ValueError(f"scan: op must be jnp.maximum or jnp.minimum, got {op}")
  n = x.shape[-1]
  if n <= SHORT_SCAN and x.size * n <= 2 ** 24:
    return _masked_scan(reduce, fill, x, reverse)
  if x.size * SCAN_BLOCK > 2 ** 24:
    return jax.lax.associative_scan(op, x, reverse=reverse, axis=x.ndim - 1)
  if reverse:
    return jnp.flip(scan(op, jnp.flip(x, -1)), -1)
  m = -(-n // SCAN_BLOCK)
  pad = [(0, 0)] * (x.ndim - 1) + [(0, m * SCAN_BLOCK - n)]
  within = _masked_scan(reduce, fill, jnp.pad(x, pad, constant_values=fill).reshape(x.shape[:-1] + (m, SCAN_BLOCK)))
  totals = scan(op, within[..., -1])  # running max of the blocks' maxima
  earlier = jnp.concatenate([jnp.full(totals.shape[:-1] + (1,), fill, x.dtype), totals[..., :-1]], -1)
  return op(within, earlier[..., None]).reshape(x.shape[:-1] + (m * SCAN_BLOCK,))[..., :n]


def _masked_scan(reduce, fill: Array, x: Array, reverse: bool = False) -> Array:
  """Running ``reduce`` along the last axis over a triangular mask (``fill``: the identity of ``reduce``)."""
  idx = jnp.arange(x.shape[-1])
  counts = idx[None, :] >= idx[:, None] if reverse else idx[None, :] <= idx[:, None]  # [k, j]: x_j enters y_k
  return reduce(jnp.where(counts, x[..., None, :], fill), axis=-1)


def _extreme(dtype, low: bool) -> Array:
  """The identity of max (low) or min for ``dtype``: ∓inf for floats, the integer limits otherwise."""
  if jnp.issubdtype(dtype, jnp.floating):
    return jnp.array(-jnp.inf if low else jnp.inf, dtype)
  info = jnp.iinfo(dtype)
  return jnp.array(info.min if low else info.max, dtype)


def cumsum(x: Array, block: int = 32) -> Array:
  """Inclusive prefix sums along the last axis as two small triangular matmuls.

  Sums within blocks of ``block`` entries, then adds the blocks' running totals: on CPU
  ~2–4× faster than a scan and as accurate (every entry is a short dot product).
  """
  n = x.shape[-1]
  b = min(block, n)
  m = -(-n // b)
  hi = jax.lax.Precision.HIGHEST
  blocks = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, m * b - n)]).reshape(x.shape[:-1] + (m, b))
  out = jnp.matmul(blocks, jnp.triu(jnp.ones((b, b), x.dtype)), precision=hi)
  if m > 1:
    out = out + jnp.matmul(out[..., -1], jnp.triu(jnp.ones((m, m), x.dtype), 1), precision=hi)[..., None]
  return out.reshape(x.shape[:-1] + (m * b,))[..., :n]
