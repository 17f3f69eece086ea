"""The methods a run can use (``--config.method``): one registry, read by the config checks and the phases.

Each entry says which schedule family builds its phases, whether a budget controller can steer it (it has a
sparsifying penalty), whether ``mode="palm"`` applies, and, for the prox family, its penalty from the config's
coefficients. Adding a prox method is one entry here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from mobileprune_jax import regularisers

# (coef section of the config, rules) -> the method's penalty
PenaltyMaker = Callable[[Any, Any], regularisers.Regulariser]


@dataclasses.dataclass(frozen=True)
class Method:
  """One method of the pipeline.

  Attributes:
    family: ``"dense"`` (pretraining only), ``"magnitude"`` (threshold, masked retraining), ``"prox"``
      (T × (prune with ``penalty`` by prox-SGD or PALM → masked retraining)) or ``"degl"`` (select → threshold →
      debias / retrain).
    budget: a budget (``budget.nonzero/params/macs``) can steer it.
    palm: ``mode="palm"`` prunes with PALM (otherwise prox-SGD whatever the mode).
    penalty: the prox family's regulariser from ``cfg.coef`` and the group rules.
    summary: one line for the docs and error messages.
  """

  family: str
  budget: bool
  summary: str
  palm: bool = False
  penalty: PenaltyMaker | None = None


def _mobileprune(c, rules) -> regularisers.Regulariser:
  shape = c.shape if c.conv_grouping != "output_filter" else 0.0
  return regularisers.l0_sparse_group_lasso(c.l0, c.neuron, c.channel, shape, rules, c.conv_grouping)


REGISTRY: dict[str, Method] = {
    "mobileprune": Method("prox", True, "ℓ0 sparse group lasso (MobilePrune)", palm=True, penalty=_mobileprune),
    "l0": Method("prox", True, "ℓ0", palm=True, penalty=lambda c, rules: regularisers.l0(c.l0, rules)),
    "l1": Method("prox", True, "ℓ1", palm=True, penalty=lambda c, rules: regularisers.l1(c.l1, rules)),
    "l2": Method("prox", False, "ℓ2 (shrinks, never zeroes)", penalty=lambda c, rules: regularisers.l2(c.l2, rules)),
    "group_lasso": Method("prox", True, "group lasso", palm=True,
                          penalty=lambda c, rules: regularisers.group_lasso(c.neuron, c.channel, c.shape, rules)),
    "l1_sgl": Method("prox", True, "ℓ1 sparse group lasso", palm=True,
                     penalty=lambda c, rules: regularisers.l1_sparse_group_lasso(c.l1, c.neuron, c.channel, c.shape,
                                                                                 rules)),
    "degl": Method("degl", True, "debiased elastic group lasso (EGL select → threshold → ridge debias)"),
    "egl": Method("degl", True, "elastic group lasso (select → threshold → retrain with the full cost)"),
    "degl_group_lasso": Method("degl", True, "DEGL with λ = 0 (group lasso select → threshold → debias)"),
    "magnitude": Method("magnitude", False, "global magnitude threshold, masked retraining"),
    "dense": Method("dense", False, "no pruning (the dense model)"),
}

METHODS = tuple(REGISTRY)
BUDGET_METHODS = tuple(name for name, m in REGISTRY.items() if m.budget)
