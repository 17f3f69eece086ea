"""Coupled units (``Regulariser.for_model``): train-step cost vs plain SGD and first-step compile time.

For LeNet-5 (28×28×1) and MobileNetV2 ×0.35 (32×32×1) it times, in alternation in one process (so
machine load hits all alike), the pipeline's jitted train step with

* plain SGD (momentum 0.9),
* SGD + ``with_prox`` of coupled ℓ0-SGL (MobilePrune) and of coupled group lasso,

and prints each ratio to plain SGD (median of ``--repeats`` blocks of ``--steps`` steps; target ≤ 1.10),
then the first-step compile time of coupled and per-layer ℓ0-SGL and group lasso against per-layer group
lasso (target ≤ 2×).

    python benchmarks/bench_coupled.py [--batch 128] [--steps 10] [--repeats 5] [--models lenet5,mobilenet_v2]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mobileprune_jax import groups, models, regularisers, transforms
from mobileprune_jax.train.steps import bound_train_step, train_step

MODELS = {
    "lenet5": ("LeNet-5", lambda: models.create("lenet5"), (28, 28, 1)),
    "mobilenet_v2": ("MobileNetV2 x0.35", lambda: models.create("mobilenet_v2", width=0.35, in_channels=1),
                     (32, 32, 1)),
}
LR = 0.05


def penalties(model, x) -> dict[str, optax.GradientTransformation | None]:
  """The transforms compared: name -> optimizer (None: plain SGD)."""
  sgd = lambda: optax.inject_hyperparams(optax.sgd)(learning_rate=LR, momentum=0.9)
  rules = groups.rules_for_model(model)
  mobileprune = regularisers.l0_sparse_group_lasso(5e-4, neuron=5e-2, channel=0.1, shape=2e-2)
  group_lasso = regularisers.group_lasso(neuron=5e-2, channel=0.1, shape=2e-2)
  return {
      "sgd": optax.sgd(LR, momentum=0.9),
      "coupled l0_sgl": transforms.with_prox(sgd(), mobileprune.for_model(model, x)),
      "coupled group_lasso": transforms.with_prox(sgd(), group_lasso.for_model(model, x)),
      "per-layer group_lasso": transforms.with_prox(sgd(), regularisers.group_lasso(
          neuron=5e-2, channel=0.1, shape=2e-2, rules=rules)),
      "per-layer l0_sgl": transforms.with_prox(sgd(), regularisers.l0_sparse_group_lasso(
          5e-4, neuron=5e-2, channel=0.1, shape=2e-2, rules=rules)),
  }


def _time(step, x, y, steps: int) -> float:
  t0 = time.perf_counter()
  for _ in range(steps):
    loss, _ = step(x, y, jnp.float32(1.0))
  jax.block_until_ready(loss)
  return (time.perf_counter() - t0) / steps


def step_ratios(model_fn, shape, batch: int, steps: int, repeats: int) -> dict[str, float]:
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, batch))
  fns = {}
  for name, tx in penalties(model_fn(), x[:2]).items():
    if name.startswith("per-layer"):
      continue
    model = model_fn()
    fns[name] = bound_train_step(model, nnx.Optimizer(model, optax.with_extra_args_support(tx), wrt=nnx.Param))
    jax.block_until_ready(fns[name](x, y, jnp.float32(1.0)))  # compile
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      times[name].append(_time(fn, x, y, steps))
  return {k: float(np.median(v)) for k, v in times.items()}


def compile_seconds(model_fn, shape, name: str) -> float:
  model = model_fn()
  x, y = jnp.zeros((8, *shape)), jnp.zeros((8,), jnp.int32)
  tx = penalties(model, x[:2])[name]
  optimizer = nnx.Optimizer(model, optax.with_extra_args_support(tx), wrt=nnx.Param)
  t0 = time.perf_counter()
  jax.block_until_ready(nnx.jit(train_step).lower(model, optimizer, x, y).compile())
  return time.perf_counter() - t0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--models", default="lenet5,mobilenet_v2")
  parser.add_argument("--compile-only", action="store_true", help="skip the step timings")
  args = parser.parse_args()
  print(f"backend {jax.default_backend()}, batch {args.batch}")
  for key in args.models.split(","):
    label, model_fn, shape = MODELS[key]
    if not args.compile_only:
      t = step_ratios(model_fn, shape, args.batch, args.steps, args.repeats)
      parts = "  ".join(f"{k} {v * 1e3:7.1f} ms ({v / t['sgd']:.2f}x)" for k, v in t.items() if k != "sgd")
      print(f"  {label:18s} train step: sgd {t['sgd'] * 1e3:7.1f} ms  {parts}  (target <= 1.10x)", flush=True)
    compiles = {name: min(compile_seconds(model_fn, shape, name) for _ in range(2))
                for name in ("per-layer group_lasso", "coupled group_lasso", "per-layer l0_sgl", "coupled l0_sgl")}
    base = compiles["per-layer group_lasso"]
    print(f"  {label:18s} first-step compile: " + "  ".join(f"{k} {v:5.1f} s ({v / base:.2f}x)"
                                                         for k, v in compiles.items()) + "  (target <= 2x)",
          flush=True)


if __name__ == "__main__":
  main()
