"""Surgery on the model zoo after a short MobilePrune prox-SGD run: widths, params, MACs, parity.

No CIFAR/HAR data is available offline, so each model takes `--steps` prox-SGD steps of
MobilePrune on random inputs with random labels (strong coefficients), which is enough to
create whole dead groups; then it is shrunk and measured.

    python benchmarks/bench_shrink_zoo.py [--steps 20] [--models lenet300 lenet5 vgg_like ...]
"""

from __future__ import annotations

import argparse
import time

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from mobileprune_jax import metrics, models, surgery, transforms
from mobileprune_jax.train.steps import train_step

ZOO = {
    "lenet300": ({}, (28, 28, 1)),
    "lenet5": ({}, (28, 28, 1)),
    "vgg_like": ({"width": 0.25}, (32, 32, 3)),
    "resnet56": ({}, (32, 32, 3)),
    "resnet32_wide": ({}, (32, 32, 3)),
    "har_cnn": ({"in_channels": 3, "num_classes": 6, "window": 80, "kernel": 10}, (80, 3)),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--channel", type=float, default=0.3, help="channel-group coefficient")
  parser.add_argument("--models", nargs="+", default=list(ZOO))
  parser.add_argument("--latency", action="store_true", help="also export both models to TFLite and time them")
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  print("| model | widths before → after (conv/dense outputs) | params dense → shrunk | MACs dense → compacted | max abs diff |")
  print("|---|---|---|---|---|")
  for name in args.models:
    kwargs, shape = ZOO[name]
    model = models.create(name, **kwargs)
    lr = 0.05
    tx = optax.chain(optax.sgd(lr, momentum=0.9),
                     transforms.l0_sparse_group_lasso(lr, l0=1e-4, neuron=0.2, channel=args.channel, shape=0.05))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    x = jnp.asarray(rng.normal(size=(args.batch, *shape)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10 if name != "har_cnn" else 6, args.batch))
    t0 = time.time()
    for _ in range(args.steps):
      train_step(model, opt, x, y)
    sample = x[:2]
    dense = models.create(name, **kwargs)
    shrunk, report = surgery.shrink_with_report(model, sample)
    s = metrics.summary(dense, shrunk, sample)
    widths = " ".join(f"{c.out_before}→{c.out_after}" for c in report.layers)
    print(f"| {name} | {widths} | {s['params_total']:,} → {s['params_remaining']:,} | "
          f"{s['macs_dense']:,} → {s['macs_pruned']:,} | {report.max_abs_diff:.1e} |  ({time.time() - t0:.0f} s)", flush=True)
    if args.latency:
      import tempfile

      from mobileprune_jax import export

      with tempfile.TemporaryDirectory() as tmp:
        r = export.compare(dense, shrunk, sample[:1], tmp, repeats=300)
      print(f"|   latency | 1 thread {r['latency_dense_ms']:.3f} → {r['latency_pruned_ms']:.3f} ms "
            f"({r['latency_ratio']:.3f}x; MACs {r['macs_ratio']:.3f}x, target {'met' if r['latency_target_met'] else 'NOT met'}) | "
            f"all threads {r['latency_dense_ms_all_threads']:.3f} → {r['latency_pruned_ms_all_threads']:.3f} ms | "
            f"file {r['tflite_bytes_dense']:,} → {r['tflite_bytes_pruned']:,} B | |", flush=True)


if __name__ == "__main__":
  main()
