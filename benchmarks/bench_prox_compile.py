"""First-step compile time of a MobileNetV2 train step: sgd + l0_sparse_group_lasso vs sgd + group_lasso.

θ (the ℓ0 tree prox) is compiled into the step once per conv kernel it is applied to; a
MobileNetV2 has about 20 distinct kernel shapes. The target of the model-zoo issue is a
ratio ≤ 2. Both steps are compiled in one process, alternately, on the same model.

    python benchmarks/bench_prox_compile.py [--width 0.35] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from mobileprune_jax import groups, models, transforms
from mobileprune_jax.train.steps import train_step


def compile_seconds(make_tx, width: float) -> float:
  model = models.create("mobilenet_v2", width=width, in_channels=1)
  optimizer = nnx.Optimizer(model, make_tx(groups.rules_for_model(model)), wrt=nnx.Param)
  x, y = jnp.zeros((8, 32, 32, 1)), jnp.zeros((8,), jnp.int32)
  t0 = time.perf_counter()
  jax.block_until_ready(nnx.jit(train_step).lower(model, optimizer, x, y).compile())
  return time.perf_counter() - t0


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--width", type=float, default=0.35)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  lr = 0.05
  variants = {
      "group_lasso": lambda rules: optax.chain(optax.sgd(lr, 0.9), transforms.group_lasso(
          lr, neuron=1e-3, channel=1e-3, shape=1e-3, rules=rules)),
      "l0_sparse_group_lasso": lambda rules: optax.chain(optax.sgd(lr, 0.9), transforms.l0_sparse_group_lasso(
          lr, l0=1e-4, neuron=1e-3, channel=1e-3, shape=1e-3, rules=rules)),
  }
  model = models.create("mobilenet_v2", width=args.width, in_channels=1)
  shapes = {tuple(k.shape) for k in jax.tree.leaves(nnx.state(model, nnx.Param)) if k.ndim == 4}
  times = {name: [] for name in variants}
  for _ in range(args.repeats):
    for name, make in variants.items():
      times[name].append(compile_seconds(make, args.width))
  best = {name: min(v) for name, v in times.items()}
  print(f"MobileNetV2 ×{args.width} (32×32×1 input), {len(shapes)} distinct conv kernel shapes; "
        f"first-step compile, best of {args.repeats}:")
  for name, seconds in best.items():
    print(f"  sgd + {name:24s} {seconds:6.1f} s")
  print(f"  ratio l0_sparse_group_lasso / group_lasso: {best['l0_sparse_group_lasso'] / best['group_lasso']:.2f}")


if __name__ == "__main__":
  main()
