"""Train-step cost of prox-SGD: sgd + l0_sparse_group_lasso vs plain sgd (target ratio ≤ 1.10).

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


def _time_steps(model_fn, tx, x, y, steps: int, repeats: int = 3) -> float:
  model = model_fn()
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, x, y):
    def loss_fn(m):
      logits = m(x, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  jax.block_until_ready(step(model, opt, x, y))  # compile
  best = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(steps):
      loss = step(model, opt, x, y)
    jax.block_until_ready(loss)
    best.append((time.perf_counter() - t0) / steps)
  return float(np.median(best))


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


def _compare(name, model_fn, shape, steps, batch, lr, rng) -> None:
  x = jnp.asarray(rng.normal(size=(batch, *shape)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, batch))
  plain = optax.sgd(lr, momentum=0.9)
  prox = optax.chain(optax.sgd(lr, momentum=0.9),
                     transforms.l0_sparse_group_lasso(lr, l0=2e-4, neuron=2e-4, channel=1e-3, shape=1e-3))
  t_plain = _time_steps(model_fn, plain, x, y, steps)
  t_prox = _time_steps(model_fn, prox, x, y, steps)
  n = sum(p.size for p in jax.tree.leaves(nnx.state(model_fn(), nnx.Param)))
  print(f"  {name:28s} batch {batch:5d}  params {n:>10,}  sgd {t_plain * 1e3:8.1f} ms  sgd+l0_sgl "
        f"{t_prox * 1e3:8.1f} ms  ratio {t_prox / t_plain:5.2f}  (target <= 1.10)", flush=True)


if __name__ == "__main__":
  main()
