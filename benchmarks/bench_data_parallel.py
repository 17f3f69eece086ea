"""Train-step time with the batch sharded over 1 vs N devices (same program, same batch).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/bench_data_parallel.py

On a CPU the "devices" are host threads sharing the same cores, so this measures the cost of
the sharded program, not a speed-up; on a multi-GPU/TPU host it measures the real scaling.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mobileprune_jax import models, transforms
from mobileprune_jax.train.steps import Placement, train_step


def time_steps(devices, x, y, steps: int, prox: bool) -> float:
  model = models.create("lenet5")
  lr = 0.01
  tx = optax.sgd(lr, momentum=0.9)
  if prox:
    tx = optax.chain(tx, transforms.l0_sparse_group_lasso(lr, l0=1e-4, neuron=1e-3, channel=1e-3, shape=1e-3))
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  placement = Placement(devices)
  placement.put_model(model, opt)
  xb, yb = placement.put_batch(x, y)
  jax.block_until_ready(train_step(model, opt, xb, yb))
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    for _ in range(steps):
      loss, _ = train_step(model, opt, xb, yb)
    jax.block_until_ready(loss)
    times.append((time.perf_counter() - t0) / steps)
  return float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(args.batch, 28, 28, 1)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, args.batch))
  n = jax.device_count()
  print(f"LeNet-5, batch {args.batch}, backend {jax.default_backend()}, {n} devices")
  for prox in (False, True):
    t1 = time_steps(jax.devices()[:1], x, y, args.steps, prox)
    tn = time_steps(jax.devices(), x, y, args.steps, prox)
    print(f"  {'sgd + l0_sgl' if prox else 'sgd':14s} 1 device {t1 * 1e3:7.1f} ms   {n} devices {tn * 1e3:7.1f} ms   "
          f"ratio {n}/1 = {tn / t1:.2f}")


if __name__ == "__main__":
  main()
