"""The coupled-unit prox on a large model: how many entries it works on, its compile time and its time per call.

``Regulariser.for_model`` lays each model's units out as padded (trees, leaves, width) blocks; the prox costs in
proportion to the padded entries, not to the weights. Times ``jax.jit(reg.prox)`` on the model's parameters
(MobileNetV2 ×1.0 at 224×224 by default; ℓ0-SGL, coefficients small enough that most units stay).

    python benchmarks/bench_unit_prox.py [--model mobilenet_v2] [--width 1.0] [--size 224] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax import models, regularisers


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="mobilenet_v2")
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  model = models.create(args.model, width=args.width, in_channels=3, num_classes=1000)
  x = jnp.zeros((1, args.size, args.size, 3))
  reg = regularisers.l0_sparse_group_lasso(1e-4, neuron=1e-3, channel=1e-3, shape=1e-3).for_model(model, x)
  params = nnx.state(model, nnx.Param)
  covered = int(sum(np.prod(s) for s in reg.units.shapes))
  blocks = reg.block_shapes() if hasattr(reg, "block_shapes") else []  # (older commits: not printed)
  padded = int(sum(np.prod(b) for b in blocks))
  prox = jax.jit(lambda p: reg.prox(p, 0.01))
  t0 = time.perf_counter()
  jax.block_until_ready(prox(params))
  first = time.perf_counter() - t0
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(prox(params))
    times.append(time.perf_counter() - t0)
  print(f"{args.model} x{args.width} at {args.size}x{args.size}: {covered:,} kernel entries in units, "
        f"{padded:,} in the padded blocks {blocks}; prox first call (compile) "
        f"{first:.1f} s, then median {1e3 * float(np.median(times)):.0f} ms")


if __name__ == "__main__":
  main()
