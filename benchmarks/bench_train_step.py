"""Train-step cost of prox-SGD: sgd + l0_sparse_group_lasso vs plain sgd (target ratio ≤ 1.10).

Both steps are the pipeline's: the optimizer accepts extra arguments and every step gets the
budget multiplier as an array (``penalty_multiplier``), so the timing includes the Regulariser
abstraction and the multiplier exactly as a run uses them.

The prox costs the same at any batch size, the gradient grows with it, so the ratio is printed
at ``--batch`` and, with ``--paper-batch``, at the papers' batch sizes (LeNet-5 600, VGG-like 1000,
MobilePrune Table B.2).

    python benchmarks/bench_train_step.py [--batch 128] [--paper-batch] [--steps 20] [--vgg-width 0.25]
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
from mobileprune_jax.train.steps import bound_train_step


def _make_step(model_fn, tx):
  """The pipeline's jitted train step (forward, backward, optimizer update), bound to a new model."""
  model = model_fn()
  step = bound_train_step(model, nnx.Optimizer(model, optax.with_extra_args_support(tx), wrt=nnx.Param))
  multiplier = jnp.float32(1.0)
  return lambda x, y: step(x, y, multiplier)


def _time(step, x, y, steps: int) -> float:
  t0 = time.perf_counter()
  for _ in range(steps):
    loss, _ = step(x, y)
  jax.block_until_ready(loss)
  return (time.perf_counter() - t0) / steps


def _time_update(model_fn, tx, repeats: int = 20) -> float:
  """The optimizer update alone (no forward/backward), median seconds."""
  params = nnx.state(model_fn(), nnx.Param)
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-2), params)
  update = jax.jit(lambda g, s, p: tx.update(g, s, p)[0])
  jax.block_until_ready(update(grads, state, params))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(update(grads, state, params))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--vgg-width", type=float, default=0.25, help="width multiplier of the VGG-like model")
  parser.add_argument("--paper-batch", action="store_true", help="also time at the papers' batch sizes")
  args = parser.parse_args()
  lr = 1e-3
  rng = np.random.default_rng(0)
  cases = [
      ("LeNet-5 (28x28x1)", lambda: models.create("lenet5"), (28, 28, 1), args.steps, 600),
      (f"VGG-like x{args.vgg_width} (32x32x3)", lambda: models.vgg_like_cifar(width=args.vgg_width, rngs=nnx.Rngs(0)),
       (32, 32, 3), max(2, args.steps // 4), 1000),
  ]
  print(f"backend {jax.default_backend()}")
  for name, model_fn, shape, steps, paper_batch in cases:
    for batch in [args.batch] + ([paper_batch] if args.paper_batch and paper_batch != args.batch else []):
      _compare(name, model_fn, shape, max(2, steps * args.batch // batch), batch, lr, rng)


def _compare(name, model_fn, shape, steps, batch, lr, rng, repeats: int = 7) -> None:
  """Times both steps in alternation (so machine load drifts hit both alike).

  Prints the ratio of the medians and of the minima (the least disturbed runs)."""
  x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, batch))
  plain = optax.sgd(lr, momentum=0.9)
  prox_tx = transforms.l0_sparse_group_lasso(lr, l0=2e-4, neuron=2e-4, channel=1e-3, shape=1e-3)
  steps_fn = {"sgd": _make_step(model_fn, plain), "prox": _make_step(model_fn, optax.chain(plain, prox_tx))}
  for fn in steps_fn.values():
    jax.block_until_ready(fn(x, y))  # compile
  times = {k: [] for k in steps_fn}
  for _ in range(repeats):
    for k, fn in steps_fn.items():
      times[k].append(_time(fn, x, y, steps))
  t_plain, t_prox = float(np.median(times["sgd"])), float(np.median(times["prox"]))
  min_ratio = min(times["prox"]) / min(times["sgd"])
  t_update = _time_update(model_fn, prox_tx)
  n = sum(p.size for p in jax.tree.leaves(nnx.state(model_fn(), nnx.Param)))
  print(f"  {name:28s} batch {batch:5d}  params {n:>10,}  sgd {t_plain * 1e3:8.1f} ms  sgd+l0_sgl "
        f"{t_prox * 1e3:8.1f} ms  ratio {t_prox / t_plain:5.2f} (of minima {min_ratio:5.2f}; target <= 1.10)  "
        f"[prox update alone {t_update * 1e3:6.1f} ms = {t_update / t_plain:5.1%} of the sgd step]", flush=True)


if __name__ == "__main__":
  main()
