"""Builders shared by the configs: the CPU-sized base run, MobilePrune paper rows (PALM), DEGL paper rows."""

import ml_collections

# prox-SGD coefficients tuned on the embedded MNIST subset (README job); the paper's
# Table B.2 values are for PALM steps 1/(1.1 L) and are far too weak for prox-SGD at lr 0.05.
MOBILEPRUNE_COEF = dict(l0=5e-4, neuron=5e-2, channel=0.1, shape=2e-2)


def base(model: str, method: str) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = f"{model}_{method}"
  c.dataset = "mnist_subset"
  c.model = model
  c.method = method
  c.mode = "prox_sgd"
  c.batch_size = 100
  c.pretrain = dict(epochs=6, optimizer="adam", lr=1e-3)
  c.prune = dict(iterations=3, epochs=2, lr=0.05, momentum=0.9)
  c.retrain = dict(epochs=2, optimizer="adam", lr=5e-4)
  c.coef = dict(MOBILEPRUNE_COEF, coupled=False)  # the papers' per-layer groups
  if method == "group_lasso":
    c.coef = dict(l0=0.0, neuron=MOBILEPRUNE_COEF["neuron"], channel=MOBILEPRUNE_COEF["channel"],
                  shape=MOBILEPRUNE_COEF["shape"], coupled=False)
  if method in ("degl", "egl", "degl_group_lasso"):
    # DEGL Table 1 (LeNet-5): gamma 5e-3, lambda 1e-4; EGL selection by prox-SGD at lr 0.05
    c.pretrain = dict(epochs=0)
    c.degl = dict(select_epochs=10, lr=0.05, momentum=0.9, gamma=5e-3, lam=1e-4, t_th=1e-2, retrain_epochs=4)
  return c


def paper_mobileprune(model, dataset, *, l0, neuron, channel, shape, prune_epochs=0, prune_steps=0, retrain_epochs,
                      iterations, weight_decay, batch_size, pretrain_epochs=20, model_kwargs=None,
                      retrain_optimizer="sgd") -> ml_collections.ConfigDict:
  """A MobilePrune paper row (docs/algorithms.md §B, Table B.2): faithful PALM pruning, masked retraining."""
  c = base(model, "mobileprune")
  c.name = f"paper_{model}_{dataset}_mobileprune"
  c.dataset = dataset
  c.mode = "palm"
  c.batch_size = batch_size
  if model_kwargs:
    c.model_kwargs = model_kwargs
  c.pretrain = dict(epochs=pretrain_epochs, optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=weight_decay,
                    schedule="cosine")
  c.prune = dict(iterations=iterations, epochs=prune_epochs, steps=prune_steps)
  c.retrain = dict(epochs=retrain_epochs, optimizer=retrain_optimizer, lr=1e-3, momentum=0.9, weight_decay=weight_decay)
  c.coef = dict(l0=l0, neuron=neuron, channel=channel, shape=shape, coupled=False)
  return c


def paper_degl(model, dataset, *, epochs, gamma, lam, thresholds, row, batch_size, lr=0.05, retrain_epochs=None):
  """A DEGL paper row (docs/algorithms.md §H): EGL selection for `epochs`, threshold t_th, debiased retraining.

  ``row`` names the table row: ``DEGL<i>`` (t_th = thresholds[i-1]), ``EGL<i>`` (same threshold, retrained with
  the full cost, no debiasing) or ``GL<i>`` (the group-lasso ablation: λ = 0).
  """
  kinds = {"DEGL": "degl", "EGL": "egl", "GL": "degl_group_lasso"}
  kind = row.rstrip("0123456789")
  index = row[len(kind):]
  if kind not in kinds or not index.isdigit() or not 1 <= int(index) <= len(thresholds):
    raise ValueError(f"row must be DEGL1..DEGL{len(thresholds)}, EGL<i> or GL<i>, got {row!r}")
  c = base(model, kinds[kind])
  c.name = f"paper_{model}_{dataset}_{row.lower()}"
  c.dataset = dataset
  c.batch_size = batch_size
  c.degl = dict(select_epochs=epochs, lr=lr, momentum=0.9, gamma=gamma, lam=lam, t_th=thresholds[int(index) - 1],
                retrain_epochs=retrain_epochs if retrain_epochs is not None else max(epochs // 4, 1))
  return c
