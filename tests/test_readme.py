"""The README's example runs as printed and does what its comments say."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax.models.lenet import LeNet5

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _first_python_block() -> str:
  blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
  assert blocks, "README.md has no python example"
  return blocks[0]


def test_the_readme_example_runs_and_its_optimizer_takes_the_penalty_s_prox():
  model = LeNet5(rngs=nnx.Rngs(0))
  sample_batch = jnp.asarray(np.random.default_rng(0).normal(size=(2, 28, 28, 1)), jnp.float32)
  namespace = {"model": model, "sample_batch": sample_batch}
  exec(compile(_first_python_block(), "README.md", "exec"), namespace)  # the README's own code
  reg, optimizer, small = namespace["reg"], namespace["optimizer"], namespace["small"]

  # surgery: a separate module with the same outputs (nothing is zero yet, so nothing is removed).
  assert isinstance(small, nnx.Module) and small is not model
  np.testing.assert_allclose(np.asarray(small(sample_batch)), np.asarray(model(sample_batch)), atol=1e-5)

  # with_prox: with zero gradients SGD moves nothing, so one step is exactly prox at the base's step 1e-3.
  before = jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param)))  # a copy, not the variables
  expected = reg.prox(jax.tree.map(jnp.asarray, before), 1e-3)
  optimizer.update(model, jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param)))
  after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-7), after, expected)
  changed = sum(int(np.sum(np.asarray(a) != np.asarray(b))) for a, b in
                zip(jax.tree.leaves(after), jax.tree.leaves(before)))
  assert changed > 0, "the prox changed nothing: the README's coefficients would not sparsify"


def test_the_readme_s_main_job_numbers_are_those_of_its_results_file():
  """The README's table is written by experiments/scripts/report_run.py --readme, never typed: it must equal the
  key-value rows and provenance of experiments/results/readme_job.md."""
  import importlib.util

  root = README.parent
  spec = importlib.util.spec_from_file_location("report_run", root / "experiments" / "scripts" / "report_run.py")
  report_run = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(report_run)
  text = README.read_text()
  block = text.split(report_run.README_START, 1)[1].split(report_run.README_END, 1)[0].strip("\n")
  results = (root / "experiments" / "results" / "readme_job.md").read_text()
  assert block == report_run.readme_block(results)
  assert "| test accuracy (dense → pruned) |" in block and "Measured at commit " in block
