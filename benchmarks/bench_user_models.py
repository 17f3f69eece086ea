"""Models written outside the zoo, as users write them: train a few dozen steps with a sparse group
penalty, shrink, export, and measure (the table of the model-zoo issue).

Each model is trained for ``--steps`` prox-SGD steps on random inputs and labels with
``l0_sparse_group_lasso`` (the depthwise kernels grouped per channel, attention kernels per head:
``groups.rules_for_model``), so that whole groups become exactly zero; then ``surgery.shrink``, then
``export.to_tflite`` of both models (LiteRT parity checked inside) and LiteRT latency (batch 1,
1 thread, median). The model definitions are those of ``tests/test_surgery_user_models.py``,
``tests/test_surgery_shape_sites.py`` and ``tests/test_surgery_recurrent.py``.

    python benchmarks/bench_user_models.py [--steps 40] [--repeats 200]
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mobileprune_jax import export, groups, models, surgery, transforms
from mobileprune_jax.config import import_file

REPO = pathlib.Path(__file__).resolve().parents[1]


def _models():
  t = import_file(REPO / "tests" / "test_surgery_user_models.py")
  shapes = import_file(REPO / "tests" / "test_surgery_shape_sites.py")
  loops = import_file(REPO / "tests" / "test_surgery_recurrent.py")
  return {
      "ShuffleNetV2 unit (split, shuffle)": (lambda: shapes.ShuffleUnit(nnx.Rngs(0)), (8, 8, 3), 5),
      "GRU (nnx.RNN) between dense layers": (lambda: loops.Recurrent(nnx.GRUCell, nnx.Rngs(0)), (6, 4), 5),
      "Flax NNX tutorial CNN (avg_pool)": (lambda: t.TutorialCNN(rngs=nnx.Rngs(0)), (28, 28, 1), 10),
      "max-pool after concat (BN, residual, flatten)": (lambda: t.ConcatPoolNet(nnx.Rngs(0)), (8, 8, 3), 5),
      "MobileNetV2 ×0.35 (zoo, 32×32)": (lambda: models.create("mobilenet_v2", width=0.35, in_channels=1),
                                         (32, 32, 1), 10),
      "MobileNetV1 stack (depthwise separable)": (lambda: t.MobileNetV1Stack(nnx.Rngs(0)), (10, 10, 3), 5),
      "ViT block (nnx.MultiHeadAttention)": (lambda: t.ViTBlock(nnx.Rngs(0)), (6, 32), 5),
  }


def _dead_by_perturbation(model, shape, tol: float = 1e-6) -> int:
  """Output channels of every Conv / Linear / LinearGeneral whose value the outputs do not depend on.

  Independent of the planner: each channel in turn gets large random noise added where its layer
  produces it (in inference mode); if no output moves by more than ``tol`` on random inputs, nothing
  downstream reads it, so it can go. (Channels that are exactly zero and read by non-zero weights
  are removable too but not found this way: the count is a lower bound on what is dead.)
  """
  model = nnx.clone(model)
  model.eval()
  x = jnp.asarray(np.random.default_rng(7).normal(size=(4, *shape)) * 3, jnp.float32)
  reference = np.asarray(model(x))
  producers = [node for _, node in nnx.iter_graph(model) if isinstance(node, (nnx.Conv, nnx.Linear, nnx.LinearGeneral))]
  dead = 0
  for layer in producers:
    cls = type(layer)
    n = int(np.prod(layer.kernel.shape[-1:] if not isinstance(layer, nnx.LinearGeneral)
                    else layer.kernel.shape[len(layer.in_features):]))
    k = len(layer.out_features) if isinstance(layer, nnx.LinearGeneral) else 1  # output feature axes
    for c in range(n):
      class Noisy(cls):  # the same module, with noise added to output feature c
        def __call__(self, inputs, *args, _c=c, _k=k, **kwargs):
          out = super().__call__(inputs, *args, **kwargs)
          flat = out.reshape(out.shape[:out.ndim - _k] + (-1,))
          noise = 100.0 * jax.random.normal(jax.random.key(_c), flat.shape[:-1], flat.dtype)
          return flat.at[..., _c].add(noise).reshape(out.shape)
      layer.__class__ = Noisy
      moved = float(np.max(np.abs(np.asarray(model(x)) - reference)))
      layer.__class__ = cls
      dead += moved <= tol
  return dead


def _train(model, shape, classes, steps: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  lr = 0.05
  tx = optax.chain(optax.sgd(lr, momentum=0.9), transforms.l0_sparse_group_lasso(
      lr, l0=2e-3, neuron=0.3, channel=0.3, shape=5e-2, rules=groups.rules_for_model(model)))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, x, y):
    def loss_fn(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  for _ in range(steps):
    x = jnp.asarray(rng.normal(size=(16, *shape)), jnp.float32)
    y = jnp.asarray(rng.integers(0, classes, 16))
    step(model, optimizer, x, y)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--repeats", type=int, default=200)
  args = parser.parse_args()
  rows = []
  for name, (make, shape, classes) in _models().items():
    model = make()
    _train(model, shape, classes, args.steps)
    x = np.random.default_rng(1).normal(size=(1, *shape)).astype(np.float32)
    small, report = surgery.shrink_with_report(model, x)
    removed = sum(c.out_before - c.out_after for c in report.layers)
    total = sum(c.out_before for c in report.layers)
    unread = _dead_by_perturbation(model, shape)
    with tempfile.TemporaryDirectory() as d:
      cmp = export.compare(model, small, x, d, repeats=args.repeats)
      tflite_parity = max(export.parity(cmp["tflite_path_dense"], model, x),
                          export.parity(cmp["tflite_path"], small, x))
    rows.append((name, report.params_before, report.params_after, removed, unread, total, report.max_abs_diff,
                 tflite_parity, cmp["latency_dense_ms"], cmp["latency_pruned_ms"]))
    print(f"done: {name}", flush=True)
  print(f"\n{args.steps} prox-SGD steps (l0_sparse_group_lasso) on random data, then shrink and LiteRT export "
        f"(batch 1, 1 thread, median of {args.repeats}):\n")
  print("| model | params before → after | output channels removed | of which unread (perturbation test) | "
        "shrink parity | LiteRT parity | LiteRT latency dense → shrunk |")
  print("|---|---|---|---|---|---|---|")
  for name, before, after, removed, unread, total, diff, lite, lat_d, lat_s in rows:
    print(f"| {name} | {before:,} → {after:,} | {removed} of {total} | {unread} | {diff:.1e} | {lite:.1e} | "
          f"{lat_d:.3f} → {lat_s:.3f} ms |")


if __name__ == "__main__":
  main()
