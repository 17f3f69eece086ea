"""The offline comparison grid: every method on every model/data set this repo can run without the net.

    python -m mobileprune_jax run --config experiments/configs/offline.py:lenet5,l1_sgl,mnist_subset --workdir runs/x

Argument ``"MODEL,METHOD,DATASET"``:
  * MODEL: lenet300 | lenet5 (MNIST-like images) | har_cnn (sensor windows),
  * METHOD: mobileprune (prox-SGD) | mobileprune_palm (PALM, spec §B) | degl | egl | group_lasso | l1_sgl | l0 | l1,
  * DATASET: mnist_subset (embedded) | fashion_mnist_idx (Debian's dataset-fashion-mnist) | basic_motions (aeon).

The schedule is scaled to each data set (``PROFILES``), and the coefficients of the terms that
accumulate over prox-SGD steps (ℓ1, group terms, DEGL's γ and λ) are scaled by the number of
prune steps relative to the embedded-MNIST schedule they were tuned on; ℓ0 is a threshold per
step and is not scaled.
"""

from . import common

METHODS = ("mobileprune", "mobileprune_palm", "degl", "egl", "group_lasso", "l1_sgl", "l0", "l1")

# per data set: batch, epochs of each phase, the coefficient scale of the accumulating terms, and optionally a
# prune learning rate (coefficients are then multiplied by SGD_LR / prune_lr so the prox shrink per step stays put)
PROFILES = {
    "mnist_subset": dict(batch_size=100, pretrain=6, iterations=3, prune=2, retrain=2, select=10, debias=4, scale=1.0),
    "fashion_mnist_idx": dict(batch_size=100, pretrain=3, iterations=2, prune=1, retrain=1, select=3, debias=1,
                              scale=0.4),
    # the HAR CNN (5 convs, no BN) diverges under SGD at lr 0.05: lr 0.01, coefficients ×5 (same shrink per step)
    "basic_motions": dict(batch_size=4, pretrain=20, iterations=3, prune=5, retrain=5, select=20, debias=8,
                          scale=1.0, prune_lr=0.01),
}
SGD_LR = 0.05  # the prune / DEGL-selection learning rate the coefficients were tuned at

# prox-SGD (lr 0.05, momentum 0.9) coefficients on the embedded MNIST schedule
COEF = {
    "mobileprune": dict(common.MOBILEPRUNE_COEF),
    "group_lasso": dict(common.MOBILEPRUNE_COEF, l0=0.0),
    "l1_sgl": dict(common.MOBILEPRUNE_COEF, l0=0.0, l1=2e-3),
    "l0": dict(l0=1e-3, neuron=0.0, channel=0.0, shape=0.0),
    "l1": dict(l0=0.0, neuron=0.0, channel=0.0, shape=0.0, l1=5e-3),
}
# PALM steps are 1/(1.1 L) per block (L from backtracking), not the SGD learning rate. LeNet-5's blocks have
# L ≈ 4-5 (steps ≈ 0.2); LeNet-300's start at L ≈ 1.3 (steps ≈ 0.7), so its coefficients are 4× smaller; the
# HAR CNN at the LeNet-5 values kept 0.4 % of its weights and lost 9 points on BasicMotions, so ×0.2 there.
PALM_COEF = dict(l0=1.25e-4, neuron=1.2e-2, channel=2.5e-2, shape=5e-3)
PALM_MODEL_SCALE = {"lenet300": 0.25, "har_cnn": 0.2}
ACCUMULATING = ("neuron", "channel", "shape", "l1")


def get_config(arg: str = "lenet5,mobileprune,mnist_subset"):
  model, method, dataset = arg.split(",")
  if method not in METHODS:
    raise ValueError(f"method {method!r} is not one of {METHODS}")
  if dataset not in PROFILES:
    raise ValueError(f"dataset {dataset!r} is not one of {sorted(PROFILES)}")
  p = PROFILES[dataset]
  lr = p.get("prune_lr", SGD_LR)
  lr_scale = SGD_LR / lr
  base_method = "mobileprune" if method == "mobileprune_palm" else method
  c = common.base(model, base_method)
  c.name = f"{model}_{method}_{dataset}"
  c.dataset = dataset
  c.batch_size = p["batch_size"]
  c.pretrain = dict(epochs=p["pretrain"], optimizer="adam", lr=1e-3)
  c.prune = dict(iterations=p["iterations"], epochs=p["prune"], lr=lr, momentum=0.9)
  c.retrain = dict(epochs=p["retrain"], optimizer="adam", lr=5e-4)
  if method == "mobileprune_palm":
    c.mode = "palm"
    coef = {k: v * PALM_MODEL_SCALE.get(model, 1.0) for k, v in PALM_COEF.items()}
  elif method in COEF:
    coef = dict(COEF[method])
  else:  # degl / egl
    coef = {}
    c.pretrain = dict(epochs=0)
    c.degl = dict(select_epochs=p["select"], lr=lr, momentum=0.9, gamma=5e-3 * p["scale"] * lr_scale,
                  lam=1e-4 * p["scale"] * lr_scale, t_th=1e-2, retrain_epochs=p["debias"])
  if method != "mobileprune_palm":  # PALM has no learning rate
    coef = {k: v * lr_scale for k, v in coef.items()}
  c.coef = {k: v * p["scale"] if k in ACCUMULATING else v for k, v in coef.items()}
  return c
