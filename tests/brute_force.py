"""Independent float64 numpy references: objectives and exhaustive-support minimisers.

Nothing here imports the library. The exhaustive minimisers enumerate every support
S ⊆ {1..n}; on a fixed support the penalties left are convex group norms whose prox is
known in closed form (block soft threshold, and for nested groups leaf-then-root
composition, Jenatton et al. 2011), so each support is solved exactly and the best
objective over all supports is the global minimum.
"""

from __future__ import annotations

import itertools

import numpy as np


def all_supports(n: int) -> np.ndarray:
  """Boolean matrix (2**n, n) of every subset of n entries."""
  return np.array(list(itertools.product([False, True], repeat=n)), dtype=bool)


def _shrink(v: np.ndarray, lam: float, axis) -> np.ndarray:
  norm = np.sqrt(np.sum(v * v, axis=axis, keepdims=True))
  with np.errstate(divide="ignore", invalid="ignore"):
    f = np.where(norm > lam, 1 - lam / np.where(norm > 0, norm, 1), 0.0)
  return v * f


def objective_pi(x, y, lam, eta):
  """½‖x−y‖² + lam‖x‖₂ + eta‖x‖₀ over the last axis (batched)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return (0.5 * np.sum((x - y) ** 2, -1) + lam * np.sqrt(np.sum(x * x, -1))
          + eta * np.count_nonzero(x, -1))


def objective_theta(x, y, alpha, beta, gamma):
  """½‖x−y‖² + alpha‖x‖₀ + beta Σᵢ‖xᵢ‖ + gamma‖x‖ for x of shape (..., L, F)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return (0.5 * np.sum((x - y) ** 2, (-2, -1)) + alpha * np.count_nonzero(x, (-2, -1))
          + beta * np.sum(np.sqrt(np.sum(x * x, -1)), -1)
          + gamma * np.sqrt(np.sum(x * x, (-2, -1))))


def objective_tree_l1(x, y, l1, beta, gamma):
  """½‖x−y‖² + l1‖x‖₁ + beta Σᵢ‖xᵢ‖ + gamma‖x‖ for one tree x of shape (L, F)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return (0.5 * np.sum((x - y) ** 2) + l1 * np.sum(np.abs(x))
          + beta * np.sum(np.sqrt(np.sum(x * x, -1))) + gamma * np.sqrt(np.sum(x * x)))


def brute_pi(y: np.ndarray, lam: float, eta: float) -> float:
  """min_x ½‖x−y‖² + lam‖x‖₂ + eta‖x‖₀ for one vector y, by enumerating supports."""
  y = np.asarray(y, np.float64)
  masks = all_supports(y.size)
  cand = _shrink(np.where(masks, y, 0.0), lam, axis=-1)
  return float(np.min(objective_pi(cand, y[None], lam, eta)))


def best_pi_by_size(y: np.ndarray, lam: float, eta: float) -> float:
  """min of the π objective for one long vector y: for each support size k only the k largest |y_j| can be best
  (swapping a kept entry for a larger dropped one lowers ½‖x − y‖² at equal norm penalty), so enumerating k in
  float64 is exact where enumerating supports is not feasible."""
  y = np.asarray(y, np.float64)
  a = np.sort(np.abs(y))[::-1]
  s = np.sqrt(np.concatenate([[0.0], np.cumsum(a * a)]))
  total = 0.5 * np.sum(y * y)
  # x = top-k scaled by (1 − lam/s_k)_+: objective = ½‖y‖² − ½(s_k − lam)_+² + eta·k (k = 0: ½‖y‖²)
  kept = np.maximum(s - lam, 0)
  objective = total - 0.5 * kept**2 + eta * np.arange(a.size + 1) * (kept > 0)
  return float(np.min(objective))


def brute_theta(y: np.ndarray, alpha: float, beta: float, gamma: float) -> float:
  """min of the θ objective for one tree y of shape (L, F), by enumerating supports."""
  y = np.asarray(y, np.float64)
  masks = all_supports(y.size).reshape((-1,) + y.shape)
  z = _shrink(np.where(masks, y[None], 0.0), beta, axis=-1)
  cand = _shrink(z, gamma, axis=(-2, -1))
  return float(np.min(objective_theta(cand, y[None], alpha, beta, gamma)))


def objective_theta_leafwise(x, y, alpha, beta_leaf, gamma):
  """½‖x−y‖² + alpha‖x‖₀ + Σᵢ betaᵢ‖xᵢ‖ + gamma‖x‖ for x of shape (..., L, F), beta_leaf of shape (L,)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return (0.5 * np.sum((x - y) ** 2, (-2, -1)) + alpha * np.count_nonzero(x, (-2, -1))
          + np.sum(np.asarray(beta_leaf, np.float64) * np.sqrt(np.sum(x * x, -1)), -1)
          + gamma * np.sqrt(np.sum(x * x, (-2, -1))))


def brute_theta_leafwise(y: np.ndarray, alpha: float, beta_leaf: np.ndarray, gamma: float,
                         real: np.ndarray | None = None) -> float:
  """min of the θ objective with one coefficient per leaf, by enumerating the supports of the ``real`` entries
  (a boolean mask like y; entries outside it are padding fixed at 0)."""
  y = np.asarray(y, np.float64)
  real = np.ones(y.shape, bool) if real is None else np.asarray(real, bool)
  masks = np.zeros((2 ** int(real.sum()),) + y.shape, bool)
  masks[:, real] = all_supports(int(real.sum()))
  beta = np.asarray(beta_leaf, np.float64)[:, None]
  z = _shrink(np.where(masks, y[None], 0.0), beta, axis=-1)
  cand = _shrink(z, gamma, axis=(-2, -1))
  return float(np.min(objective_theta_leafwise(cand, y[None], alpha, beta_leaf, gamma)))
