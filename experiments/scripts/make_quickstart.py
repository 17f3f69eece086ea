"""Writes experiments/notebooks/quickstart.ipynb from the cells below (``--execute`` also runs it and keeps the outputs)."""

import pathlib
import sys

import nbformat

CELLS = [
    ("md", """# mobileprune_jax quickstart: train → prune → shrink → export

Everything runs on the MNIST subset that ships inside the package (no download), in about a minute on a laptop CPU.

1. train LeNet-5 densely for one epoch,
2. prune with the ℓ0 sparse group lasso prox (MobilePrune) chained after SGD — one line of optax,
3. retrain with the support frozen (`keep_support`),
4. cut the zero channels / neurons out physically (`surgery.shrink`) — the small model computes the same function,
5. export both models to TFLite, check parity in LiteRT and time them."""),
    ("code", """import jax, jax.numpy as jnp, numpy as np, optax
from flax import nnx
from mobileprune_jax import data, metrics, models, surgery, transforms
from mobileprune_jax.train.steps import evaluate, train_step

ds = data.load("mnist_subset")
print(ds.train_x.shape, ds.test_x.shape, ds.num_classes)

def epochs(model, tx, n, seed=0):
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  for e in range(n):
    for xb, yb in data.batches(ds.train_x, ds.train_y, 100, seed=seed + e):
      train_step(model, optimizer, jnp.asarray(xb), jnp.asarray(yb))
  return evaluate(model, ds.test_x, ds.test_y, 500)

def nonzero(model):
  p = nnx.state(model, nnx.Param)
  return metrics.count_nonzero(p) / metrics.count_params(p)"""),
    ("md", "## 1. Dense training"),
    ("code", """model = models.create("lenet5", seed=0)
dense = models.create("lenet5", seed=0)  # an untrained copy, only for counting
acc_dense = epochs(model, optax.adam(1e-3), 2)
print(f"dense test accuracy {acc_dense:.4f}")"""),
    ("md", """## 2. Prune: SGD followed by the MobilePrune prox (π on dense layers, θ on conv input channels)

The transform maps the update u to prox(p + u) − p, so `apply_updates` lands exactly on the prox: whole neurons,
channels and filter taps become exact zeros. The classifier's outputs are left out of the group terms by a rule."""),
    ("code", """lr = 0.05
rules = [(r"^fc2/(kernel|bias)$", "none")]
tx = optax.chain(optax.sgd(lr, momentum=0.9),
                 transforms.l0_sparse_group_lasso(lr, l0=1e-3, neuron=0.15, channel=0.25, shape=0.03, rules=rules))
acc_pruned = epochs(model, tx, 2, seed=10)
print(f"after pruning: accuracy {acc_pruned:.4f}, non-zero weights {100 * nonzero(model):.2f} %")"""),
    ("md", "## 3. Retrain on the frozen support"),
    ("code", """acc_retrained = epochs(model, optax.chain(optax.adam(5e-4), transforms.keep_support()), 1, seed=20)
print(f"after retraining: accuracy {acc_retrained:.4f}, non-zero weights {100 * nonzero(model):.2f} %")"""),
    ("md", "## 4. Physical surgery: a smaller model with the same outputs"),
    ("code", """sample = jnp.asarray(ds.test_x[:8])
small, report = surgery.shrink_with_report(model, sample)
s = metrics.summary(dense, small, sample)
print(f"architecture {s['architecture_dense']} -> {s['architecture']}")
print(f"params {s['params_total']:,} -> {s['params_remaining']:,}   MACs {s['macs_dense']:,} -> {s['macs_pruned']:,}")
diff = float(jnp.max(jnp.abs(model(sample) - small(sample))))
print(f"max |masked - shrunk| on test images: {diff:.2e}")
assert diff < 1e-4
assert evaluate(small, ds.test_x, ds.test_y, 500) == evaluate(model, ds.test_x, ds.test_y, 500)"""),
    ("md", "## 5. TFLite export, parity in LiteRT, latency (needs `pip install -r requirements-export.txt`)"),
    ("code", """import pathlib, tempfile
from mobileprune_jax import export

out = pathlib.Path(tempfile.mkdtemp())
result = export.compare(model, small, sample[:1], out, repeats=100)  # exports both, checks parity, times them
for k in ("tflite_bytes_dense", "tflite_bytes_pruned", "latency_dense_ms", "latency_pruned_ms"):
  print(f"{k:22s} {result[k]:,.3f}")
print(f"latency ratio {result['latency_ratio']:.2f} (MACs ratio {result['macs_ratio']:.2f})")"""),
]


def execute(path: pathlib.Path) -> None:
  """Runs the notebook in place so that the committed file shows its outputs."""
  import nbclient

  nb = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(nb, timeout=900, kernel_name="python3").execute()
  for cell in nb.cells:  # keep results, drop TensorFlow's start-up log lines
    if cell.cell_type == "code":
      cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
  nbformat.write(nb, path)


def main() -> None:
  nb = nbformat.v4.new_notebook()
  nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src) for kind, src in CELLS]
  nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
  path = pathlib.Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
  nbformat.write(nb, path)
  if "--execute" in sys.argv:
    execute(path)
  print(path)


if __name__ == "__main__":
  main()
