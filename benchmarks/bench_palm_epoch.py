"""PALM vs prox-SGD: the wall time of one pruning epoch of the README job's LeNet-5 (target: PALM ≤ 2×).

Both epochs are the pipeline's own pruning phases (``train.phases.build_phases`` of
``experiments/configs/lenet5_mobileprune.py`` with ``mode=prox_sgd`` and ``mode=palm``): the same
model, regulariser, batches (7,200 training digits, batch 100: 72 steps) and multiplier. Each epoch
is compiled first, then the two are timed in alternation ``--repeats`` times in one process (machine
load hits both alike) and the medians are compared.

    python benchmarks/bench_palm_epoch.py [--repeats 5] [--coupled]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax import analysis, config, data, models
from mobileprune_jax.train.phases import build_phases
from mobileprune_jax.train.steps import Placement

CONFIG = "experiments/configs/lenet5_mobileprune.py"


def pruning_epoch(mode: str, coupled: bool, x: np.ndarray, y: np.ndarray, batch: int):
  """``run()`` -> seconds for one pruning epoch of ``mode`` over (x, y), on a fresh model each call."""
  cfg = config.load_config(CONFIG)
  config.apply_overrides(cfg, [f"--config.mode={mode}", f"--config.coef.coupled={coupled}"])
  model = models.create("lenet5", seed=0)
  sample = jnp.asarray(x[:2])
  structure = analysis.analyze(model, sample)
  phases = build_phases(cfg, structure.kernel_paths, sample, len(x) // batch, model_rules=structure.rules,
                        model=model, graph=structure.graph)
  prune = next(p for p in phases if p.name.startswith("prune"))
  placement = Placement()
  start_state = nnx.state(model)

  def run() -> float:
    nnx.update(model, start_state)
    step = prune.build(model).start(placement)
    t0 = time.perf_counter()
    for i in range(0, len(x) - batch + 1, batch):
      loss, _ = step(*placement.put_batch(x[i:i + batch], y[i:i + batch]), 1.0)
    jax.block_until_ready(loss)
    return time.perf_counter() - t0

  return run


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--coupled", action="store_true", help="coupled units (Regulariser.for_model)")
  args = parser.parse_args()
  if args.repeats < 1:
    parser.error(f"--repeats must be a positive integer, got {args.repeats}")
  ds = data.load("mnist_subset")
  x, y = ds.train_x[:7200], ds.train_y[:7200].astype(np.int32)
  epochs = {mode: pruning_epoch(mode, args.coupled, x, y, 100) for mode in ("prox_sgd", "palm")}
  for run in epochs.values():
    run()  # compile
  times = {mode: [] for mode in epochs}
  for _ in range(args.repeats):
    for mode, run in epochs.items():
      times[mode].append(run())
  sgd, palm = (float(np.median(times[m])) for m in ("prox_sgd", "palm"))
  groups = "coupled units" if args.coupled else "per-layer groups"
  print(f"backend {jax.default_backend()}; LeNet-5, {groups}, 72 steps of batch 100; medians of {args.repeats}")
  print(f"  prox-SGD epoch {sgd:6.2f} s   PALM epoch {palm:6.2f} s   ratio {palm / sgd:.2f}x   (target <= 2x)")


if __name__ == "__main__":
  main()
