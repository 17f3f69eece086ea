"""The budget-matched comparison: every method pruned to the same size, from the same dense model.

    python -m mobileprune_jax run --config experiments/configs/budget_grid.py:lenet5,dense,mnist_subset --workdir D
    python -m mobileprune_jax run --config experiments/configs/budget_grid.py:lenet5,l1_sgl,mnist_subset,0.01 \\
        --config.init_from=D/model --workdir W

Argument ``"MODEL,METHOD,DATASET[,BUDGET]"``: METHOD is ``dense`` or one of ``METHODS``; BUDGET is the
fraction of non-zero weights to prune to (``budget.nonzero``). Every pruning cell starts from the
dense run of its (model, data set, seed) (``init_from``), so within a seed the methods differ only
in the regulariser; a budget controller sets the penalty's strength, so the coefficients below are
only starting points (their ratios define each penalty). ``experiments/budget_grid.py`` runs the
grid (dense runs first) and writes the tables.

Choices and deviations from the papers (also listed in ``experiments/results/paper_vs_ours.md``):
  * one validation split per seed (``val_fraction`` of the training data) for every choice; the
    schedules below were chosen by validation accuracy; test data are read once per reported number;
  * the dense models train with random shifts of ≤ 2 pixels (MNIST-like images; none for sensors),
    Adam + cosine decay; pruning phases: prox-SGD (lr ``PRUNE_LR``, momentum 0.9) or PALM, masked Adam
    retraining; T = 2 prune/retrain iterations, the size ramping from dense to the budget over the whole
    first pruning phase;
  * DEGL / EGL start from the dense model too (the paper trains them from scratch) and get the same
    number of epochs as the other methods (select = T·P, debias/retrain = T·R); exact prox selection
    and a constant rate (the paper: (sub)gradient SGD, lr ×0.1 on a 5-epoch plateau: ``degl.selection``,
    ``degl.plateau_patience``); the classifier is outside the selection penalty but inside the ridge;
  * MobilePrune and ℓ1-SGL penalise the classifier's bias with λn (each entry its own group); the
    classifier kernel is outside the group terms of every method.
"""

import ml_collections

from . import common

METHODS = ("mobileprune", "mobileprune_palm", "degl", "egl", "group_lasso", "l1_sgl", "l0", "l1")
BUDGETS = (0.005, 0.01, 0.02, 0.05)
PRUNE_LR = 0.05

# batch, validation fraction, augmentation, dense epochs per model, and the pruning schedule (T × (P + R))
PROFILES = {
    "mnist_subset": dict(batch_size=100, val_fraction=0.1, shift=2, dense={"lenet5": 20, "lenet300": 30},
                         iterations=2, prune=6, retrain=4, prune_lr=PRUNE_LR),
    # MobileNetV2 ×0.35 on the images zero-padded to 32×32 (``MODEL_OPTIONS``): a train step takes ~2.8 s at batch
    # 128 on 2 CPU cores, so its cells are for accelerators (one Fashion-MNIST epoch ≈ 20 min on such a CPU)
    "fashion_mnist_idx": dict(batch_size=100, val_fraction=0.1, shift=2,
                              dense={"lenet5": 10, "lenet300": 15, "mobilenet_v2": 10},
                              iterations=2, prune=3, retrain=2, prune_lr=PRUNE_LR),
    # 40 training windows: 8 held out, 8 steps per epoch; the HAR CNN (5 convs, no BN) diverges under SGD at lr
    # 0.05; with 5 pruning epochs (40 steps) every method collapsed to chance at ≤ 1 %: 15 epochs, control every 4 steps
    "basic_motions": dict(batch_size=4, val_fraction=0.2, shift=0, dense={"har_cnn": 40},
                          iterations=2, prune=15, retrain=5, prune_lr=0.01, interval=4),
}

# what a model needs beyond the profile (the MobileNet is CIFAR-sized: 32×32 input, one channel here)
MODEL_OPTIONS = {"mobilenet_v2": dict(pad_to=32, model_kwargs=dict(width=0.35, in_channels=1))}

# starting coefficients (prox-SGD at lr 0.05); the controller rescales all of a method's terms together
START = {
    "mobileprune": dict(common.MOBILEPRUNE_COEF),
    "group_lasso": dict(common.MOBILEPRUNE_COEF, l0=0.0),
    "l1_sgl": dict(common.MOBILEPRUNE_COEF, l0=0.0, l1=2e-3),
    "l0": dict(l0=1e-3, neuron=0.0, channel=0.0, shape=0.0),
    "l1": dict(l0=0.0, neuron=0.0, channel=0.0, shape=0.0, l1=5e-3),
}
PALM_START = dict(l0=1.25e-4, neuron=1.2e-2, channel=2.5e-2, shape=5e-3)  # PALM steps 1/(1.1 L), L ≈ 1-5
DEGL_START = dict(gamma=5e-3, lam=1e-4)  # DEGL Table 1 (LeNet-5)


def get_config(arg: str = "lenet5,mobileprune,mnist_subset,0.01") -> ml_collections.ConfigDict:
  parts = arg.split(",")
  if len(parts) not in (3, 4):
    raise ValueError(f"expected MODEL,METHOD,DATASET[,BUDGET], got {arg!r}")
  model, method, dataset = parts[:3]
  if dataset not in PROFILES:
    raise ValueError(f"dataset {dataset!r} is not one of {sorted(PROFILES)}")
  p = PROFILES[dataset]
  if model not in p["dense"]:
    raise ValueError(f"model {model!r} is not in the {dataset} grid ({sorted(p['dense'])})")
  if method != "dense" and method not in METHODS:
    raise ValueError(f"method {method!r} is not dense or one of {METHODS}")
  if (method == "dense") != (len(parts) == 3):
    raise ValueError("a dense run takes no budget; a pruning run needs one")
  c = common.base(model, "mobileprune" if method == "mobileprune_palm" else method)
  c.name = f"{model}_{method}_{dataset}" + (f"_{parts[3]}" if len(parts) == 4 else "")
  c.dataset = dataset
  c.batch_size = p["batch_size"]
  c.val_fraction = p["val_fraction"]
  c.augment_shift = p["shift"]
  for key, value in MODEL_OPTIONS.get(model, {}).items():
    c[key] = value
  c.pretrain = dict(epochs=p["dense"][model] if method == "dense" else 0, optimizer="adam", lr=1e-3,
                    schedule="cosine")
  if method == "dense":
    return c
  # the size ramps down over the whole first pruning phase
  c.budget = dict(nonzero=float(parts[3]), ramp=1.0, interval=p.get("interval", 0))
  t, pr, rt = p["iterations"], p["prune"], p["retrain"]
  c.prune = dict(iterations=t, epochs=pr, lr=p["prune_lr"], momentum=0.9)
  c.retrain = dict(epochs=rt, optimizer="adam", lr=5e-4, schedule="cosine")
  scale = PRUNE_LR / p["prune_lr"]  # the same shrink per step at a smaller learning rate
  if method == "mobileprune_palm":
    c.mode = "palm"
    c.coef = dict(PALM_START, coupled=False)
  elif method in ("degl", "egl"):
    c.degl = dict(select_epochs=t * pr, retrain_epochs=t * rt, lr=p["prune_lr"], momentum=0.9,
                  gamma=DEGL_START["gamma"] * scale, lam=DEGL_START["lam"] * scale, t_th=1e-2)
  else:
    c.coef = {**{k: v * scale for k, v in START[method].items()}, "coupled": False}
  return c
