"""PALM vs prox-SGD: the wall time of one pruning epoch of the README job's LeNet-5 (target: PALM ≤ 2×).

Every epoch is the pipeline's own pruning phase (``train.phases.build_phases`` of
``experiments/configs/lenet5_mobileprune.py``): prox-SGD (``mode=prox_sgd``), PALM as the papers run
it (``mode=palm``: each block's backtracking starts at L = 1) and PALM with warm-started
backtracking (``prune.palm_warm_start=True``). All three start from the same trained LeNet-5 (Adam
for ``--pretrain`` epochs: PALM's accepted L, hence its backtracking, grows as the model trains; on an
untrained model L ≈ 1 and PALM looks cheap), with the same regulariser, multiplier and batches
(7,200 training digits, batch 100: 72 steps). Each step is compiled once, before timing (a phase
compiles its step once); the epochs are timed in alternation ``--repeats`` times in one process
(machine load hits all alike) and the medians compared.

``--grid`` times the budget grid's cells instead (``experiments/configs/budget_grid.py:lenet5,METHOD,
mnist_subset,0.01``, METHOD mobileprune / mobileprune_palm: their own coefficients, prox-SGD at lr 0.05):
there PALM's accepted L is 5-60 and the papers' backtracking dominates the epoch. The last line, the
"sweep floor", runs the same sweep with ``prune.palm_max_backtracks=0`` (each block takes its first
candidate): a block Gauss–Seidel sweep takes one gradient per block after the earlier blocks moved, so this
is the least a PALM epoch can cost whatever the backtracking.

    python benchmarks/bench_palm_epoch.py [--repeats 3] [--pretrain 3] [--multiplier 1.0] [--coupled] [--grid]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mobileprune_jax import analysis, config, data, models
from mobileprune_jax.train.phases import build_phases
from mobileprune_jax.train.steps import Placement, train_step

CONFIG = "experiments/configs/lenet5_mobileprune.py"
GRID = "experiments/configs/budget_grid.py:lenet5,{},mnist_subset,0.01"
MODES = {"prox-SGD": ("prox_sgd", False, None), "PALM (papers: L from 1)": ("palm", False, None),
         "PALM (warm-started L)": ("palm", True, None), "sweep floor (not a solver)": ("palm", False, 0)}
BATCH = 100


def trained_lenet5(x: np.ndarray, y: np.ndarray, epochs: int) -> nnx.State:
  """The parameters of a LeNet-5 trained with Adam (lr 1e-3) for ``epochs`` epochs over (x, y)."""
  model = models.create("lenet5", seed=0)
  optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
  for _ in range(epochs):
    for i in range(0, len(x) - BATCH + 1, BATCH):
      train_step(model, optimizer, jnp.asarray(x[i:i + BATCH]), jnp.asarray(y[i:i + BATCH]))
  return nnx.state(model)


def magnitude_pruned(start: nnx.State, nonzero: float) -> nnx.State:
  """``start`` with all but the largest ``nonzero`` fraction of kernel entries (by |w|, over all kernels) set to 0."""
  kernels = [v for p, v in jax.tree.leaves_with_path(start) if "kernel" in jax.tree_util.keystr(p)]
  keep = max(1, int(nonzero * sum(k.size for k in kernels)))
  threshold = np.sort(np.concatenate([np.abs(np.asarray(k)).ravel() for k in kernels]))[-keep]
  return jax.tree.map_with_path(
      lambda p, v: jnp.where(jnp.abs(v) >= threshold, v, 0) if "kernel" in jax.tree_util.keystr(p) else v, start)


def pruning_epoch(mode: str, warm: bool, coupled: bool, start: nnx.State, x: np.ndarray, y: np.ndarray,
                  multiplier: float, grid: bool = False, backtracks: int | None = None):
  """``run() -> (seconds, mean L or nan)`` for one pruning epoch of ``mode`` over (x, y), from ``start`` each call.

  ``backtracks`` overrides ``prune.palm_max_backtracks`` (0: every block takes its first candidate).
  """
  cfg = config.load_config(GRID.format("mobileprune_palm" if mode == "palm" else "mobileprune") if grid else CONFIG)
  overrides = [f"mode={mode}", f"coef.coupled={coupled}", f"prune.palm_warm_start={warm}"]
  config.apply_overrides(cfg, overrides + ([f"prune.palm_max_backtracks={backtracks}"] if backtracks is not None else []))
  model = models.create("lenet5", seed=0)
  sample = jnp.asarray(x[:2])
  structure = analysis.analyze(model, sample)
  phases = build_phases(cfg, structure.kernel_paths, sample, len(x) // BATCH, model_rules=structure.rules,
                        model=model, graph=structure.graph)
  prune = next(p for p in phases if p.name.startswith("prune"))
  placement = Placement()
  nnx.update(model, start)
  stepper = prune.build(model)
  fresh = stepper.items()
  step = stepper.start(placement)
  jax.block_until_ready(step(*placement.put_batch(x[:BATCH], y[:BATCH]), multiplier))  # compile

  def run() -> tuple[float, float]:
    nnx.update(model, start)
    if fresh:
      stepper.restore(fresh)
    placement.put_model(model)
    lips = []
    t0 = time.perf_counter()
    for i in range(0, len(x) - BATCH + 1, BATCH):
      loss, lip = step(*placement.put_batch(x[i:i + BATCH], y[i:i + BATCH]), multiplier)
      lips.append(lip)
    jax.block_until_ready(loss)
    seconds = time.perf_counter() - t0
    return seconds, float(np.mean([float(v) for v in lips])) if lips[0] is not None else float("nan")

  return run


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--pretrain", type=int, default=3, help="Adam epochs before pruning (0: untrained model)")
  parser.add_argument("--multiplier", type=float, default=1.0, help="the penalty multiplier (the budget's)")
  parser.add_argument("--coupled", action="store_true", help="coupled units (Regulariser.for_model)")
  parser.add_argument("--grid", action="store_true", help="the budget grid's LeNet-5 cells' configs")
  parser.add_argument("--nonzero", type=float, default=1.0,
                      help="start from the trained model magnitude-pruned to this fraction of its kernel entries "
                           "(PALM's L grows as a model gets sparse: the grid's second pruning phase runs at 2-5 %%)")
  args = parser.parse_args()
  if args.repeats < 1 or args.pretrain < 0 or args.multiplier < 0 or not 0 < args.nonzero <= 1:
    parser.error("--repeats must be >= 1, --pretrain and --multiplier >= 0, --nonzero in (0, 1]")
  ds = data.load("mnist_subset")
  x, y = ds.train_x[:7200], ds.train_y[:7200].astype(np.int32)
  start = trained_lenet5(x, y, args.pretrain)
  if args.nonzero < 1.0:
    start = magnitude_pruned(start, args.nonzero)
  epochs = {name: pruning_epoch(mode, warm, args.coupled, start, x, y, args.multiplier, args.grid, backtracks)
            for name, (mode, warm, backtracks) in MODES.items()}
  times = {name: [] for name in epochs}
  lips = {}
  for _ in range(args.repeats):
    for name, run in epochs.items():
      seconds, lips[name] = run()
      times[name].append(seconds)
  groups = "coupled units" if args.coupled else "per-layer groups"
  source = "the budget grid's cell configs" if args.grid else CONFIG
  print(f"backend {jax.default_backend()}; {source}; LeNet-5 after {args.pretrain} Adam epochs, {groups}, multiplier "
        f"{args.multiplier:g}, {100 * args.nonzero:g} % of kernel entries kept, 72 steps of batch {BATCH}; medians of {args.repeats}")
  base = float(np.median(times["prox-SGD"]))
  for name in epochs:
    seconds = float(np.median(times[name]))
    lip = f"   mean accepted L {lips[name]:6.2f}" if not np.isnan(lips[name]) and "floor" not in name else ""
    print(f"  {name:26s} epoch {seconds:6.2f} s   {seconds / base:5.2f}x prox-SGD{lip}   (target PALM <= 2x)")
  print("  sweep floor: the same Gauss-Seidel sweep with one candidate per block (no backtracking; its steps are not "
        "PALM's): one gradient and one forward per block, the least any backtracking PALM can cost")


if __name__ == "__main__":
  main()
