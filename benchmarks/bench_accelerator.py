"""On a GPU/TPU: the prox-step / plain-step ratio and one budget-grid cell's wall time (MobileNetV2 ×0.35).

    python benchmarks/bench_accelerator.py [--steps 50] [--batch 128] [--cell] [--workdir runs/accelerator_cell]

Prints the backend and devices first. On a CPU it says so and still runs (the numbers are then CPU numbers:
never report them as accelerator numbers). ``--cell`` also runs one budget-grid cell end to end through the
pipeline as the grid runs it (the dense MobileNetV2 ×0.35 on Fashion-MNIST 32×32, then MobilePrune prox-SGD at 2 %
non-zero from it) and prints both wall times (a finished workdir is not rerun); the data need Debian's
``dataset-fashion-mnist`` or ``--config.data_dir``-style files (see ``docs/training.md``). On 2 CPU cores such a cell
takes hours (≈ 110 h for the 33 MobileNetV2 cells of the grid).
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mobileprune_jax import models, regularisers, transforms
from mobileprune_jax.train.steps import bound_train_step


def _step(model, tx):
  step = bound_train_step(model, nnx.Optimizer(model, optax.with_extra_args_support(tx), wrt=nnx.Param))
  multiplier = jnp.float32(1.0)
  return lambda x, y: step(x, y, multiplier)


def _seconds_per_step(step, x, y, steps: int) -> float:
  loss, _ = step(x, y)
  loss.block_until_ready()  # compiled and warm
  t0 = time.perf_counter()
  for _ in range(steps):
    loss, _ = step(x, y)
  loss.block_until_ready()
  return (time.perf_counter() - t0) / steps


def step_ratio(batch: int, steps: int, rounds: int = 3) -> dict[str, float]:
  """Median over alternated rounds of (coupled ℓ0-SGL prox-SGD step) / (plain SGD step) on MobileNetV2 ×0.35."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, 32, 32, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, size=batch), jnp.int32)
  make = lambda: models.create("mobilenet_v2", seed=0, width=0.35, in_channels=1, num_classes=10)
  sgd = optax.sgd(0.05, momentum=0.9)
  plain = _step(make(), sgd)
  model = make()
  reg = regularisers.l0_sparse_group_lasso(l0=1e-4, neuron=1e-2, channel=2e-2, shape=2e-3).for_model(model, x[:2])
  prox = _step(model, transforms.with_prox(optax.inject_hyperparams(optax.sgd)(learning_rate=0.05, momentum=0.9),
                                           reg))
  plain_s, prox_s = [], []
  for _ in range(rounds):
    plain_s.append(_seconds_per_step(plain, x, y, steps))
    prox_s.append(_seconds_per_step(prox, x, y, steps))
  p, q = float(np.median(plain_s)), float(np.median(prox_s))
  return {"plain_ms": 1e3 * p, "prox_ms": 1e3 * q, "ratio": q / p}


def _run(spec: str, workdir: pathlib.Path, overrides: list[str]) -> dict[str, float]:
  from mobileprune_jax import config as config_lib
  from mobileprune_jax.train import loop

  cfg = config_lib.load_config(f"experiments/configs/budget_grid.py:{spec}")
  config_lib.apply_overrides(cfg, ["progress=False", *overrides])
  t0 = time.perf_counter()
  if not (workdir / "summary.json").exists():
    loop.run(cfg, workdir, resume=(workdir / "checkpoints").exists())
  return {"wall_s": time.perf_counter() - t0}


def run_cell(workdir: pathlib.Path) -> dict[str, float]:
  """The grid's dense MobileNetV2 run, then one pruning cell from it (as ``experiments/budget_grid.py`` runs them)."""
  dense = _run("mobilenet_v2,dense,fashion_mnist_idx", workdir / "dense", [])
  cell = _run("mobilenet_v2,mobileprune,fashion_mnist_idx,0.02", workdir / "cell",
              [f"init_from={workdir / 'dense' / 'model'}"])
  return {"dense_run_s": dense["wall_s"], "pruning_cell_s": cell["wall_s"]}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=50)
  parser.add_argument("--cell", action="store_true", help="also run one budget-grid cell end to end")
  parser.add_argument("--workdir", type=pathlib.Path, default=pathlib.Path("runs/accelerator_cell"))
  args = parser.parse_args()
  backend = jax.default_backend()
  print(f"backend {backend}: {len(jax.devices())} × {jax.devices()[0].device_kind}")
  if backend == "cpu":
    print("no accelerator: the numbers below are CPU numbers")
  r = step_ratio(args.batch, args.steps)
  print(f"MobileNetV2 ×0.35, batch {args.batch}: plain SGD {r['plain_ms']:.2f} ms/step, coupled ℓ0-SGL prox-SGD "
        f"{r['prox_ms']:.2f} ms/step, ratio {r['ratio']:.3f}")
  if args.cell:
    c = run_cell(args.workdir)
    print("budget-grid cell mobilenet_v2 / mobileprune / fashion_mnist_idx / 2 %: " +
          ", ".join(f"{k} {v:.1f}" for k, v in c.items()))


if __name__ == "__main__":
  main()
