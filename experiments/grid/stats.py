"""Paired comparisons of two methods on the same seeds and the same test examples.

Two tests, both paired (each seed's cells of the two methods start from the same dense model and are scored on
the same test examples):

* over seeds: the mean of the per-seed accuracy differences d_s = acc_A(s) − acc_B(s) with a two-sided
  Student-t interval, mean ± t_{n−1, 0.975}·sd/√n (no interval for one seed);
* over test examples: McNemar's exact test on the discordant examples pooled over seeds — b examples only A
  gets right, c only B — p = min(1, 2·P[Binomial(b + c, ½) ≤ min(b, c)]). Pooling treats a test example
  scored under several seeds as several pairs: the seeds' models are different, the examples are not.

A difference is called a lead only when both agree (the interval excludes 0 and p < 0.05; one seed has no interval,
so no lead); "within noise" otherwise.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats as scipy_stats


class Paired(NamedTuple):
  n: int  # seeds
  mean: float  # mean accuracy difference A − B (fraction)
  low: float  # the interval (nan for one seed)
  high: float
  only_a: int  # test examples (pooled over seeds) A gets right and B wrong
  only_b: int
  p: float  # McNemar's exact two-sided p

  @property
  def lead(self) -> bool:
    return self.n > 1 and (self.low > 0 or self.high < 0) and self.p < 0.05

  def describe(self, a: str, b: str) -> str:
    """E.g. ``+0.42 pt [−0.10, +0.94] (n=3), McNemar 41 vs 29, p = 0.19: within noise``."""
    ci = f" [{100 * self.low:+.2f}, {100 * self.high:+.2f}]" if self.n > 1 else ""
    ahead = a if self.mean > 0 else b
    if self.lead:
      verdict = f"{ahead} leads"
    elif self.n == 1 and self.p < 0.05:
      verdict = f"{ahead} ahead on this seed's test examples (one seed: no interval, no lead claimed)"
    else:
      verdict = "within noise"
    return (f"{100 * self.mean:+.2f} pt{ci} (n={self.n}), McNemar {self.only_a} vs {self.only_b}, "
            f"p = {self.p:.2g}: {verdict}")


def t_interval(diffs: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high) of the mean difference; the bounds are nan for one value."""
  mean = statistics.mean(diffs)
  if len(diffs) < 2:
    return mean, math.nan, math.nan
  half = scipy_stats.t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
  return mean, mean - half, mean + half


def mcnemar(only_a: int, only_b: int) -> float:
  """Exact two-sided p of McNemar's test from the discordant counts."""
  n = only_a + only_b
  if n == 0:
    return 1.0
  k = min(only_a, only_b)
  tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
  return min(1.0, 2 * tail)


def paired(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> Paired:
  """Compares per-seed correctness vectors of A and B (same seeds, same order, same test examples)."""
  if len(a) != len(b) or not a:
    raise ValueError(f"paired comparison needs the same seeds on both sides, got {len(a)} and {len(b)}")
  diffs = [float(np.mean(x)) - float(np.mean(y)) for x, y in zip(a, b)]
  mean, low, high = t_interval(diffs)
  only_a = sum(int(np.sum(x & ~y)) for x, y in zip(a, b))
  only_b = sum(int(np.sum(~x & y)) for x, y in zip(a, b))
  return Paired(len(a), mean, low, high, only_a, only_b, mcnemar(only_a, only_b))
