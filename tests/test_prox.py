"""Proximal operators against independent references (exhaustive supports, scipy, grids)."""

from __future__ import annotations

import itertools

import brute_force as bf
import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st

from mobileprune_jax import prox
from mobileprune_jax.prox import group_l0, tree_l0

TOL = 1e-9  # objective gaps are float64 round-off (≤ 1e-13 seen)
DTYPES = [np.float32, np.float64]


def _run(fn, dtype, *args):
  """Calls a prox in dtype (enabling x64 for float64) and returns float64 numpy."""
  with jax.enable_x64(dtype == np.float64):
    out = fn(np.asarray(args[0], dtype), *args[1:])
    assert out.dtype == dtype
    return np.asarray(out, np.float64)


def _regime(x):
  nz = np.count_nonzero(x)
  return "zero" if nz == 0 else ("full" if nz == x.size else "partial")


# ----------------------------------------------------------------------------- ℓ0 SGL ---


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.slow
def test_pi_is_global_minimum_by_support_enumeration(dtype):
  rng = np.random.default_rng(0)
  regimes, worst = {"zero": 0, "full": 0, "partial": 0}, -np.inf
  for n in range(1, 9):
    b = 50
    y = rng.normal(size=(b, n)) * rng.uniform(0.1, 3, size=(b, 1))
    lam = rng.uniform(0, 1, b) ** 2 * (rng.random(b) > 0.1)
    eta = rng.uniform(0, 0.5, b) ** 2 * (rng.random(b) > 0.1)
    y32 = y.astype(dtype).astype(np.float64)  # the problem actually solved
    x = _run(prox.pi, dtype, y32, lam, eta)
    for i in range(b):
      gap = bf.objective_pi(x[i], y32[i], lam[i], eta[i]) - bf.brute_pi(y32[i], lam[i], eta[i])
      worst = max(worst, gap)
      regimes[_regime(x[i])] += 1
  print(f"pi worst objective gap ({np.dtype(dtype).name}): {worst:.3e}, regimes {regimes}")
  assert worst <= TOL * (1e4 if dtype == np.float32 else 1)
  assert min(regimes.values()) >= 30


def _theta_shapes():
  return [(L, F) for L in range(1, 5) for F in range(1, 9) if 2 <= L * F <= 8] + [(3, 3), (2, 5)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.slow
def test_theta_is_global_minimum_by_support_enumeration(dtype):
  rng = np.random.default_rng(1)
  regimes, worst, naive_worse = {"zero": 0, "full": 0, "partial": 0}, -np.inf, 0
  for L, F in _theta_shapes():
    b = 16
    y = rng.normal(size=(b, L, F)) * rng.uniform(0.1, 3, size=(b, 1, 1))
    alpha, beta, gamma = (rng.uniform(0, 0.7, (3, b)) ** 2) * (rng.random((3, b)) > 0.1)
    y = y.astype(dtype).astype(np.float64)
    x = _run(prox.theta, dtype, y, alpha, beta, gamma)
    naive = _naive_theta(y, alpha, beta, gamma)
    for i in range(b):
      best = bf.brute_theta(y[i], alpha[i], beta[i], gamma[i])
      worst = max(worst, bf.objective_theta(x[i], y[i], alpha[i], beta[i], gamma[i]) - best)
      naive_worse += bf.objective_theta(naive[i], y[i], alpha[i], beta[i], gamma[i]) > best + 1e-6
      regimes[_regime(x[i])] += 1
  print(f"theta worst objective gap ({np.dtype(dtype).name}): {worst:.3e}, regimes {regimes}, "
        f"naive shortcut suboptimal in {naive_worse} cases")
  assert worst <= TOL * (1e4 if dtype == np.float32 else 1)
  assert min(regimes.values()) >= 30
  assert naive_worse > 0  # the test can tell an inexact θ from the exact one


def _naive_theta(y, alpha, beta, gamma):
  """The tempting inexact shortcut: π on every leaf, then shrink the root (numpy)."""
  out = np.zeros_like(y)
  for i in range(y.shape[0]):
    for j in range(y.shape[1]):
      out[i, j] = _np_pi(y[i, j], beta[i], alpha[i])
    root = np.linalg.norm(out[i])
    out[i] *= max(1 - gamma[i] / root, 0) if root > 0 else 0
  return out


def _np_pi(v, lam, eta):
  best, best_x = bf.objective_pi(np.zeros_like(v), v, lam, eta), np.zeros_like(v)
  for mask in bf.all_supports(v.size):
    z = np.where(mask, v, 0)
    nrm = np.linalg.norm(z)
    cand = z * (max(1 - lam / nrm, 0) if nrm > 0 else 0)
    val = bf.objective_pi(cand, v, lam, eta)
    if val < best - 1e-15:
      best, best_x = val, cand
  return best_x


@pytest.mark.slow
def test_theta_larger_trees_against_enumeration():
  rng = np.random.default_rng(2)
  worst = -np.inf
  for L, F in [(3, 3), (3, 4), (2, 6), (4, 3)]:
    b = 6
    y = rng.normal(size=(b, L, F))
    a, be, g = (rng.uniform(0, 0.6, (3, b)) ** 2)
    x = _run(prox.theta, np.float64, y, a, be, g)
    for i in range(b):
      worst = max(worst, bf.objective_theta(x[i], y[i], a[i], be[i], g[i]) - bf.brute_theta(y[i], a[i], be[i], g[i]))
  assert worst <= TOL


@pytest.mark.slow
def test_ties_are_exact_and_go_to_zero():
  rng = np.random.default_rng(3)
  for _ in range(60):
    L, F = rng.integers(1, 3), rng.integers(1, 5)
    y = rng.choice([-1.0, -0.5, 0.0, 0.5, 1.0], size=(L, F))
    a, b, g = rng.choice([0.0, 0.125, 0.25, 0.5], 3)
    x = _run(prox.theta, np.float64, y, a, b, g)
    assert bf.objective_theta(x, y, a, b, g) <= bf.brute_theta(y, a, b, g) + TOL
    v = y.reshape(-1)
    xp = _run(prox.pi, np.float64, v, b, a)
    assert bf.objective_pi(xp, v, b, a) <= bf.brute_pi(v, b, a) + TOL
  # exact tie between keeping and dropping → zero
  assert np.all(_run(prox.hard_threshold, np.float64, np.array([1.0, -1.0]), 0.5) == 0)
  assert np.all(_run(prox.pi, np.float64, np.array([2.0]), 1.0, 0.5) == 0)  # ½(2−1)² = 0.5
  assert np.all(_run(prox.group_soft_threshold, np.float64, np.array([3.0, 4.0]), 5.0) == 0)


def _per_group(y, *coefs, batch_ndim=1):
  y = jnp.asarray(y)
  return y, *(jnp.broadcast_to(jnp.asarray(c, y.dtype), y.shape[:batch_ndim]) for c in coefs)


@jax.jit
def _jit_bracketed_theta(y, alpha, beta, gamma):
  return tree_l0.theta_bracketed(y, alpha, beta, gamma)


@jax.jit
def _jit_exact_theta(y, alpha, beta, gamma):
  return tree_l0.theta_exact(y, alpha, beta, gamma)


def _bracketed_pi(y, lam, eta):
  x, ambiguous = jax.jit(group_l0.pi_bracketed)(*_per_group(y, lam, eta))
  return np.asarray(x, np.float64), np.asarray(ambiguous)


def _bracketed_theta(y, alpha, beta, gamma):
  x, ambiguous = _jit_bracketed_theta(*_per_group(y, alpha, beta, gamma))
  return np.asarray(x, np.float64), np.asarray(ambiguous)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.slow
def test_bracketed_shortcut_is_exact_wherever_it_settles(dtype):
  """The sort-free path (``_bracket``) against support enumeration, on the groups it claims to settle."""
  rng = np.random.default_rng(4)
  settled, total, worst = 0, 0, -np.inf
  with jax.enable_x64(dtype == np.float64):
    for n in range(1, 9):
      b = 60
      y = (rng.normal(size=(b, n)) * rng.uniform(0.1, 3, size=(b, 1))).astype(dtype)
      lam, eta = rng.uniform(0, 0.6, (2, b)) ** 2
      x, ambiguous = _bracketed_pi(y, lam, eta)
      for i in np.flatnonzero(~ambiguous):
        y64 = y[i].astype(np.float64)
        worst = max(worst, bf.objective_pi(x[i], y64, lam[i], eta[i]) - bf.brute_pi(y64, lam[i], eta[i]))
      settled, total = settled + np.sum(~ambiguous), total + b
    for L, F in _theta_shapes():
      b = 20
      y = (rng.normal(size=(b, L, F)) * rng.uniform(0.1, 3, size=(b, 1, 1))).astype(dtype)
      alpha, beta, gamma = rng.uniform(0, 0.6, (3, b)) ** 2
      x, ambiguous = _bracketed_theta(y, alpha, beta, gamma)
      for i in np.flatnonzero(~ambiguous):
        y64 = y[i].astype(np.float64)
        worst = max(worst, bf.objective_theta(x[i], y64, alpha[i], beta[i], gamma[i])
                    - bf.brute_theta(y64, alpha[i], beta[i], gamma[i]))
      settled, total = settled + np.sum(~ambiguous), total + b
  print(f"bracketed ({np.dtype(dtype).name}): settled {settled}/{total}, worst objective gap {worst:.3e}")
  assert worst <= TOL * (1e4 if dtype == np.float32 else 1)
  assert 0.3 * total < settled < total  # both outcomes occur, so the test sees each


@pytest.mark.slow
def test_leaf_bounds_contain_and_are_contained_in_every_maximiser():
  """θ's sort-free leaf step: at a root slope w, ``_leaf_inner`` ⊆ every maximiser S of
  w·(‖y_S‖ − beta)_+² − alpha·|S| ⊆ ``_leaf_outer``, the maximisers found by enumerating all S."""
  rng = np.random.default_rng(7)
  checked, tight = 0, 0
  with jax.enable_x64(True):
    for F in range(1, 9):
      t, L = 40, 3
      y = rng.normal(size=(t, L, F)) * rng.uniform(0.1, 3, size=(t, L, 1))
      y[rng.random(y.shape) < 0.15] = 0  # exact zeros: never worth keeping when alpha > 0
      w = rng.uniform(0, 1, t) * (rng.random(t) > 0.1)
      alpha, beta = rng.uniform(0, 0.6, (2, t)) ** 2
      alpha[rng.random(t) < 0.1] = 0
      args = (jnp.square(y), jnp.sum(jnp.square(y), -1), w, alpha, beta, 1024 * float(np.finfo(np.float64).eps))
      outer = np.asarray(jax.jit(tree_l0.leaf_outer, static_argnums=5)(*args)[0])
      inner = np.asarray(jax.jit(tree_l0.leaf_inner, static_argnums=5)(*args)[0])
      subsets = bf.all_supports(F)
      for i in range(t):
        for leaf in range(L):
          u = np.sum(np.where(subsets, y[i, leaf] ** 2, 0), -1)
          gain = w[i] * np.maximum(np.sqrt(u) - beta[i], 0) ** 2 - alpha[i] * subsets.sum(-1)
          best = subsets[gain >= gain.max() - 1e-12]
          assert np.all(best | ~inner[i, leaf]), (F, i, leaf)   # inner ⊆ S
          assert np.all(~best | outer[i, leaf]), (F, i, leaf)   # S ⊆ outer
          checked += 1
          tight += bool(np.all(inner[i, leaf] == outer[i, leaf]))
  assert 0.5 * checked < tight < checked  # the bounds usually meet, and the test sees both outcomes


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.slow
def test_bracketed_shortcut_settles_training_sized_layers(dtype):
  """On a conv layer's trees and a dense layer's rows with step-scaled coefficients nearly every group
  settles without a sort, with the swept / sorted results' objective (which enumeration checks above)."""
  rng = np.random.default_rng(5)
  with jax.enable_x64(dtype == np.float64):
    t = (rng.normal(size=(64, 9, 64)) * 0.05).astype(dtype)
    t[:8] *= 0.01  # a few channels about to be pruned
    coefs = (1e-6, 1e-4, 5e-3)
    x, ambiguous = _bracketed_theta(t, *coefs)
    ref = np.asarray(_jit_exact_theta(*_per_group(t, *coefs)), np.float64)
    t64 = t.astype(np.float64)
    f_x, f_ref = bf.objective_theta(x, t64, *coefs), bf.objective_theta(ref, t64, *coefs)
    d = (rng.normal(size=(200, 500)) * 0.05).astype(dtype)
    d[:20] *= 0.01  # a few neurons about to be pruned
    lam, eta = 5e-2, 1e-6
    xd, amb_d = _bracketed_pi(d, lam, eta)
    refd = np.asarray(jax.jit(group_l0.pi_sorted)(*_per_group(d, lam, eta)))
    d64 = d.astype(np.float64)
    g_x, g_ref = bf.objective_pi(xd, d64, lam, eta), bf.objective_pi(refd, d64, lam, eta)
  assert np.mean(ambiguous) <= 0.05 and np.mean(amb_d) <= 0.05
  assert 0 < np.mean(np.all(x == 0, (-2, -1))) and 0 < np.mean(np.all(xd == 0, -1))  # some groups pruned
  tol = 1e-5 if dtype == np.float32 else 1e-12
  np.testing.assert_array_less(f_x[~ambiguous] - f_ref[~ambiguous], tol * (1 + np.abs(f_ref[~ambiguous])))
  np.testing.assert_array_less(g_x[~amb_d] - g_ref[~amb_d], tol * (1 + np.abs(g_ref[~amb_d])))


def test_many_ambiguous_groups_are_solved_chunk_by_chunk():
  """More ambiguous groups than one chunk (1/64 of the groups, at least 1): every one still comes out exact."""
  rng = np.random.default_rng(6)
  b, L, F = 48, 2, 3
  y = rng.normal(size=(b, L, F))
  gamma = np.linalg.norm(y, axis=(1, 2)) * rng.uniform(0.5, 0.9, b)  # roots near their threshold: ambiguous
  alpha, beta = rng.uniform(0.05, 0.3, b) ** 2, rng.uniform(0, 0.3, b) ** 2
  with jax.enable_x64(True):
    _, ambiguous = _bracketed_theta(y, alpha, beta, gamma)
  assert ambiguous.sum() > max(1, b // 64)
  x = _run(prox.theta, np.float64, y, alpha, beta, gamma)
  for i in range(b):
    assert bf.objective_theta(x[i], y[i], alpha[i], beta[i], gamma[i]) <= bf.brute_theta(y[i], alpha[i], beta[i], gamma[i]) + TOL


@pytest.mark.parametrize("band_fits", [True, False])
def test_long_ambiguous_groups_ranked_between_their_bounds(band_fits):
  """Coupled-unit-sized groups (8,000 entries, LeNet-5's flattened channels at a training step's coefficients): in
  float32 many are ambiguous by a few entries; those are solved by ranking only the entries between the bracket's
  bounds (``pi_banded``). With ``band_fits=False`` groups of equal magnitudes put more than ``BAND`` entries between
  the bounds and the batch is sorted instead. Objectives against the float64 enumeration of support sizes."""
  rng = np.random.default_rng(11)
  g, n = 24, 8000
  y = (rng.normal(size=(g, n)) * 0.05).astype(np.float32)
  mult = rng.uniform(1, 10, g)
  lam, eta = (0.0025 * mult).astype(np.float32), (2.5e-5 * mult).astype(np.float32)
  if not band_fits:
    for _ in range(3):  # 300 equal entries at the ℓ0 threshold η/w* with w* = Φ'(H) = ½(1 − λ/‖y‖): a wide band
      w = 0.5 * (1 - lam[:3, None] / np.linalg.norm(y[:3].astype(np.float64), axis=1, keepdims=True))
      y[:3, :300] = np.sqrt(eta[:3, None] / w).astype(np.float32)
  _, ambiguous, inner, outer = jax.jit(group_l0.pi_bounds)(jnp.asarray(y), jnp.asarray(lam), jnp.asarray(eta))
  band = np.asarray(jnp.sum(outer & ~inner, -1))[np.asarray(ambiguous)]
  assert np.sum(ambiguous) >= 3, "the test must see ambiguous groups"
  assert (band.max() > group_l0.BAND) != band_fits, band
  x = _run(prox.pi, np.float32, y, lam, eta)
  y64 = y.astype(np.float64)
  for i in range(g):
    best = bf.best_pi_by_size(y64[i], float(lam[i]), float(eta[i]))
    assert bf.objective_pi(x[i], y64[i], float(lam[i]), float(eta[i])) <= best + 1e-5 * (1 + abs(best))


def test_theta_with_tied_slopes_across_leaves_against_enumeration():
  """Identical leaves (and repeated magnitudes inside them) give switch events with exactly equal slopes: the sweep
  must evaluate the state after the whole run of equal slopes, not in between. Exhaustive supports as reference."""
  rng = np.random.default_rng(21)
  worst = -np.inf
  with jax.enable_x64(True):
    for _ in range(60):
      leaf = np.round(rng.normal(size=3) * 4) / 4  # repeated magnitudes
      y = np.stack([leaf, leaf, rng.permutation(leaf)])  # three leaves with the same events
      alpha, beta, gamma = rng.uniform(0, 0.5, 3) ** 2
      best = bf.brute_theta(y, alpha, beta, gamma)
      x = np.asarray(prox.theta(y, alpha, beta, gamma), np.float64)
      coefs = [jnp.asarray([v]) for v in (alpha, beta, gamma)]
      swept = np.asarray(_jit_exact_theta(jnp.asarray(y[None]), *coefs), np.float64)[0]  # the sweep, always
      worst = max(worst, bf.objective_theta(x, y, alpha, beta, gamma) - best,
                  bf.objective_theta(swept, y, alpha, beta, gamma) - best)
  assert worst <= TOL


def _numpy_theta():
  """The benchmark's plain numpy θ (a stack-built hull per leaf, float64): an independent reference for trees too
  large to enumerate."""
  import importlib.util
  import pathlib

  path = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "bench_theta.py"
  spec = importlib.util.spec_from_file_location("bench_theta", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.theta_numpy_one_channel


@pytest.mark.parametrize("band", [tree_l0.BAND, 1])
def test_wide_ambiguous_trees_ranked_between_their_bounds(band, monkeypatch):
  """Conv trees of 9 taps × 200 filters at a training step's coefficients: in float32 some trees are ambiguous and
  are solved by ranking only the entries between the bracket's bounds (``theta_banded``). With ``BAND`` = 1 the
  bands do not fit and the batch goes through the full sort (``theta_exact``). Objectives against numpy's θ."""
  monkeypatch.setattr(tree_l0, "BAND", band)
  rng = np.random.default_rng(13)
  t = (rng.normal(size=(96, 9, 200)) * np.sqrt(2 / (9 * 200))).astype(np.float32)
  t[:12] *= 0.05  # channels about to be pruned
  alpha, beta, gamma = 1e-6, 1e-4, 5e-3
  coef = lambda v: jnp.full(t.shape[:1], v, jnp.float32)
  _, ambiguous, inner, outer = jax.jit(tree_l0.theta_bounds)(jnp.asarray(t), coef(alpha), coef(beta), coef(gamma))
  widths = np.asarray(jnp.sum(outer & ~inner, -1))[np.asarray(ambiguous)]
  assert np.sum(ambiguous) >= 2, "the test must see ambiguous trees"
  assert (widths.max() > band) == (band == 1), widths  # the bands fit BAND, and do not fit 1
  x = np.asarray(jax.jit(lambda y: prox.theta(y, alpha, beta, gamma))(t), np.float64)
  reference, t64 = _numpy_theta(), t.astype(np.float64)
  for i in np.flatnonzero(np.asarray(ambiguous)):
    ref = reference(t64[i], alpha, beta, gamma)
    mine, theirs = bf.objective_theta(x[i], t64[i], alpha, beta, gamma), bf.objective_theta(ref, t64[i], alpha, beta, gamma)
    assert mine <= theirs + 1e-6 * (1 + abs(theirs)), (i, mine, theirs)


# ----------------------------------------------------------------- convex operators ---


def _scipy_min(f, n, y, starts=3, seed=0):
  rng = np.random.default_rng(seed)
  best = np.inf
  for x0 in [np.zeros(n), y.copy()] + [rng.normal(size=n) for _ in range(starts)]:
    res = scipy.optimize.minimize(f, x0, method="Powell", options={"xtol": 1e-10, "ftol": 1e-12, "maxiter": 20000})
    best = min(best, res.fun)
  return best


def test_group_soft_threshold_and_l1_sgl_against_scipy():
  rng = np.random.default_rng(4)
  for _ in range(40):
    n = rng.integers(1, 6)
    y = rng.normal(size=n) * 2
    l1, lam = rng.uniform(0, 1, 2)
    x = _run(prox.group_soft_threshold, np.float64, y, lam)
    f = lambda v: 0.5 * np.sum((v - y) ** 2) + lam * np.linalg.norm(v)
    assert f(x) <= _scipy_min(f, n, y) + TOL
    x = _run(prox.l1_sgl, np.float64, y, l1, lam)
    f = lambda v: 0.5 * np.sum((v - y) ** 2) + l1 * np.sum(np.abs(v)) + lam * np.linalg.norm(v)
    assert f(x) <= _scipy_min(f, n, y) + TOL


def test_tree_operators_against_scipy():
  rng = np.random.default_rng(5)
  for _ in range(30):
    L, F = rng.integers(1, 4), rng.integers(1, 3)
    y = rng.normal(size=(L, F)) * 2
    l1, beta, gamma = rng.uniform(0, 0.8, 3)
    x = _run(prox.tree_group_soft_threshold, np.float64, y, beta, gamma)
    f = lambda v: bf.objective_tree_l1(v.reshape(L, F), y, 0.0, beta, gamma)
    assert f(x) <= _scipy_min(f, L * F, y.reshape(-1)) + TOL
    x = _run(prox.tree_l1_sgl, np.float64, y, l1, beta, gamma)
    f = lambda v: bf.objective_tree_l1(v.reshape(L, F), y, l1, beta, gamma)
    assert f(x) <= _scipy_min(f, L * F, y.reshape(-1)) + TOL


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_operators_against_dense_grid(dtype):
  rng = np.random.default_rng(6)
  y = rng.normal(size=300) * 2
  c = rng.uniform(0, 1.5, size=300)
  y = y.astype(dtype).astype(np.float64)
  grid = np.unique(np.concatenate([np.linspace(-8, 8, 16001), [0.0]]))
  cases = {
      prox.hard_threshold: lambda x, y, c: 0.5 * (x - y) ** 2 + c * (x != 0),
      prox.soft_threshold: lambda x, y, c: 0.5 * (x - y) ** 2 + c * np.abs(x),
      prox.ridge: lambda x, y, c: 0.5 * (x - y) ** 2 + c * x**2,
  }
  for fn, obj in cases.items():
    x = _run(fn, dtype, y, c)
    ours = obj(x, y, c)
    grid_best = np.min(obj(grid[None, :], y[:, None], c[:, None]), axis=1)
    assert np.all(ours <= grid_best + (1e-6 if dtype == np.float32 else 1e-12)), fn.__name__


# ------------------------------------------------------------------ special cases ---


@pytest.mark.slow
def test_special_cases():
  rng = np.random.default_rng(7)
  y = rng.normal(size=(20, 1, 6))
  a, b, g = 0.05, 0.3, 0.4
  np.testing.assert_allclose(_run(prox.theta, np.float64, y, a, b, g), _run(prox.pi, np.float64, y, b + g, a), atol=1e-12)
  y = rng.normal(size=(20, 4, 5))
  np.testing.assert_allclose(_run(prox.theta, np.float64, y, a, b, 0.0), _run(prox.pi, np.float64, y, b, a), atol=1e-12)
  np.testing.assert_array_equal(_run(prox.theta, np.float64, y, a, 0.0, 0.0), _run(prox.hard_threshold, np.float64, y, a))
  np.testing.assert_array_equal(_run(prox.pi, np.float64, y, 0.0, a), _run(prox.hard_threshold, np.float64, y, a))
  np.testing.assert_allclose(_run(prox.pi, np.float64, y, b, 0.0), _run(prox.group_soft_threshold, np.float64, y, b), atol=1e-12)
  np.testing.assert_allclose(_run(prox.l1_sgl, np.float64, y, 0.0, b), _run(prox.group_soft_threshold, np.float64, y, b), atol=1e-12)
  np.testing.assert_allclose(_run(prox.tree_l1_sgl, np.float64, y, 0.1, 0.0, 0.0), _run(prox.soft_threshold, np.float64, y, 0.1), atol=1e-12)
  np.testing.assert_allclose(_run(prox.ridge, np.float64, y, 0.25), y / 1.5)


@pytest.mark.slow
def test_batched_shapes_and_per_group_coefficients():
  rng = np.random.default_rng(8)
  y = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
  lam = rng.uniform(0, 1, size=(2, 3, 4)).astype(np.float32)
  out = np.asarray(prox.pi(y, lam, 0.1))
  for idx in itertools.product(range(2), range(3), range(4)):
    np.testing.assert_allclose(out[idx], np.asarray(prox.pi(y[idx], lam[idx], 0.1)), atol=1e-6)
  alpha = rng.uniform(0, 0.2, size=(2, 3)).astype(np.float32)
  out = np.asarray(prox.theta(y, alpha, 0.2, 0.3))
  for idx in itertools.product(range(2), range(3)):
    np.testing.assert_allclose(out[idx], np.asarray(prox.theta(y[idx], alpha[idx], 0.2, 0.3)), atol=1e-6)


@pytest.mark.slow
def test_under_jit_and_vmap_with_traced_coefficients():
  rng = np.random.default_rng(9)
  y = jnp.asarray(rng.normal(size=(6, 3, 4)), jnp.float32)
  eager = prox.theta(y, 0.05, 0.2, 0.3)
  jitted = jax.jit(lambda y, a: prox.theta(y, a, 0.2, 0.3))(y, 0.05)
  vmapped = jax.vmap(lambda t: prox.theta(t, 0.05, 0.2, 0.3))(y)
  np.testing.assert_allclose(jitted, eager, atol=1e-6)
  np.testing.assert_allclose(vmapped, eager, atol=1e-6)
  np.testing.assert_allclose(jax.vmap(lambda t: prox.pi(t, 0.3, 0.05))(y), prox.pi(y, 0.3, 0.05), atol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
@pytest.mark.slow
def test_half_precision(dtype):
  rng = np.random.default_rng(10)
  y = rng.normal(size=(4, 3, 5)).astype(np.float32)
  y_half = jnp.asarray(y, dtype)
  for fn, args in [(prox.theta, (0.05, 0.2, 0.3)), (prox.pi, (0.3, 0.05)), (prox.soft_threshold, (0.2,))]:
    out = fn(y_half, *args)
    assert out.dtype == dtype
    ref = fn(np.asarray(y_half, np.float32), *args)
    np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=3e-2)
    assert np.all((np.asarray(out, np.float32) == 0) == (np.asarray(ref) == 0))


# -------------------------------------------------------------------- properties ---

_finite = st.floats(-5, 5, allow_nan=False, width=64)
_coef = st.floats(0, 1.5, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(y=hnp.arrays(np.float64, (3, 4), elements=_finite), a=_coef, b=_coef, g=_coef, seed=st.integers(0, 2**31))
def test_theta_beats_zero_input_and_perturbations(y, a, b, g, seed):
  x = _run(prox.theta, np.float64, y, a, b, g)
  f = lambda v: bf.objective_theta(v, y, a, b, g)
  fx = f(x)
  assert fx <= f(np.zeros_like(y)) + TOL and fx <= f(y) + TOL
  rng = np.random.default_rng(seed)
  for _ in range(20):
    d = rng.normal(size=y.shape) * rng.choice([1e-3, 1e-1, 1]) * (rng.random(y.shape) < 0.5)
    assert fx <= f(x + d) + TOL
    assert fx <= f(np.where(rng.random(y.shape) < 0.3, 0, x)) + TOL


@settings(max_examples=60, deadline=None)
@given(y=hnp.arrays(np.float64, (7,), elements=_finite), lam=_coef, eta=_coef, seed=st.integers(0, 2**31))
def test_pi_beats_zero_input_and_perturbations(y, lam, eta, seed):
  x = _run(prox.pi, np.float64, y, lam, eta)
  f = lambda v: bf.objective_pi(v, y, lam, eta)
  fx = f(x)
  assert fx <= f(np.zeros_like(y)) + TOL and fx <= f(y) + TOL
  rng = np.random.default_rng(seed)
  for _ in range(20):
    d = rng.normal(size=y.shape) * rng.choice([1e-3, 1e-1, 1]) * (rng.random(y.shape) < 0.5)
    assert fx <= f(x + d) + TOL


# --------------------------------------------------------------------- bad input ---


def test_bad_input_is_a_clear_error():
  y = np.ones((2, 3), np.float32)
  with pytest.raises(ValueError, match="'lam' must be non-negative"):
    prox.pi(y, -0.1, 0.0)
  with pytest.raises(ValueError, match="'gamma' must be non-negative"):
    prox.theta(y, 0.0, 0.0, -1.0)
  with pytest.raises(ValueError, match="'alpha' must be non-negative"):
    prox.hard_threshold(y, np.array([0.1, -0.1, 0.0]))
  with pytest.raises(ValueError, match="non-negative"):
    prox.soft_threshold(y, float("nan"))
  with pytest.raises(TypeError, match="floating dtype"):
    prox.group_soft_threshold(np.ones((2, 3), np.int32), 0.1)
  with pytest.raises(ValueError, match="does not broadcast"):
    prox.pi(y, np.ones(3), 0.0)
  with pytest.raises(ValueError, match="at least 2 dimension"):
    prox.theta(np.ones(3, np.float32), 0.1, 0.1, 0.1)


def test_top_k_mask_takes_tied_entries_first_come_against_a_stable_sort():
  """Exactly k entries, the largest first and ties at the cut in axis order (the sorted paths of π and θ)."""
  from mobileprune_jax.prox.bracketing import sort_nonnegative, top_k_mask

  rng = np.random.default_rng(7)
  for n in (5, 70, 300):  # short groups and ones longer than the band (their ties are ranked by a running count)
    a = rng.choice([0.0, 0.5, 1.0, 2.0], size=(40, n)).astype(np.float32)
    k = rng.integers(0, n + 1, size=40)
    mask = np.asarray(top_k_mask(jnp.asarray(a), jnp.flip(sort_nonnegative(jnp.asarray(a)), -1), jnp.asarray(k)))
    for row, kk, m in zip(a, k, mask):
      expected = np.zeros(n, bool)
      expected[np.argsort(-row, kind="stable")[:kk]] = True  # largest first, equal values in axis order
      np.testing.assert_array_equal(m, expected)


def test_pi_on_one_entry_groups_against_enumeration():
  """Groups of one entry (biases) take π's closed form: checked against both supports, ties included."""
  rng = np.random.default_rng(11)
  y = np.concatenate([rng.normal(size=300) * 2, [2.0, -2.0, 1.0, 0.0]])
  lam = np.concatenate([rng.uniform(0, 1, 300) * (rng.random(300) > 0.2), [1.0, 1.0, 0.0, 0.5]])
  eta = np.concatenate([rng.uniform(0, 1, 300) * (rng.random(300) > 0.2), [0.5, 0.0, 0.5, 0.0]])
  x = _run(prox.pi, np.float64, y[:, None], lam, eta)[:, 0]
  for i in range(len(y)):
    assert bf.objective_pi(x[i:i + 1], y[i:i + 1], lam[i], eta[i]) <= bf.brute_pi(y[i:i + 1], lam[i], eta[i]) + TOL
  assert x[-4] == 0 and x[-3] == -1.0 and x[-2] == 0  # ½(2−1)² = 0.5 = eta ties to 0; ½·1² = eta ties to 0
  assert np.count_nonzero(x) > 50 and np.count_nonzero(x == 0) > 50


@pytest.mark.parametrize("shape", [(3, 4, 1), (3, 4, 7), (3, 4, 65), (3, 4, 300), (3, 4, 513), (3, 4, 9000),
                                   (3, 5000, 40)])  # the last: too big for masks, an associative scan
def test_running_max_and_min_against_numpy(shape):
  """``scan`` (a triangular-mask reduction up to ``SHORT_SCAN`` entries, blocks of ``SCAN_BLOCK`` beyond, and blocks
  of blocks past 256 blocks) is numpy's accumulate, forwards and reversed, on floats with ±inf and on integers."""
  from mobileprune_jax.prox.bracketing import scan

  n = shape[-1]
  rng = np.random.default_rng(n)
  f = rng.normal(size=shape).astype(np.float32)
  f[0, 0, rng.integers(0, n)] = np.inf
  f[1, 1, rng.integers(0, n)] = -np.inf
  i = rng.integers(-50, 50, size=shape).astype(np.int32)
  for x in (f, i):
    for op, ufunc in ((jnp.maximum, np.maximum), (jnp.minimum, np.minimum)):
      np.testing.assert_array_equal(np.asarray(scan(op, jnp.asarray(x))), ufunc.accumulate(x, axis=-1))
      np.testing.assert_array_equal(np.asarray(scan(op, jnp.asarray(x), reverse=True)),
                                    np.flip(ufunc.accumulate(np.flip(x, -1), axis=-1), -1))
