"""Time of the model analysis on an ImageNet-sized model: ``depgraph.trace``, ``surgery.plan`` and ``for_model``.

The trace interprets the forward pass element by element (one channel node per activation element), so its cost
grows with the activations: MobileNetV2 ×1.0 at 224×224 has 12 M activation elements per example. Every budget
control point and every landing step plans a shrink, so this is what a budgeted run on such a model pays per
measurement.

    python benchmarks/bench_trace.py [--model mobilenet_v2] [--width 1.0] [--size 224] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import jax.numpy as jnp

from mobileprune_jax import models, regularisers, surgery
from mobileprune_jax.surgery import depgraph


def best_of(repeats: int, fn) -> tuple[float, object]:
  best, out = float("inf"), None
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    best = min(best, time.perf_counter() - t0)
  return best, out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="mobilenet_v2")
  parser.add_argument("--width", type=float, default=1.0)
  parser.add_argument("--size", type=int, default=224)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  model = models.create(args.model, width=args.width, in_channels=3, num_classes=1000)
  x = jnp.zeros((1, args.size, args.size, 3))
  trace_s, graph = best_of(args.repeats, lambda: depgraph.trace(model, x))
  plan_s, _ = best_of(args.repeats, lambda: surgery.plan(model, x, graph))
  reg = regularisers.l0_sparse_group_lasso(1e-4, neuron=1e-3, channel=1e-3, shape=1e-3)
  for_model_s, _ = best_of(args.repeats, lambda: reg.for_model(model, x))
  print(f"{args.model} x{args.width} at {args.size}x{args.size}, best of {args.repeats}: trace {trace_s:.1f} s, "
        f"plan (given the trace) {plan_s:.2f} s, for_model (trace + units) {for_model_s:.1f} s")


if __name__ == "__main__":
  main()
