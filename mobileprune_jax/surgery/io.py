"""Save and load shrunk models without pickle: an architecture spec (JSON) plus orbax state.

The spec names an importable factory (``"package.module:function"``) and its JSON keyword
arguments, which build the *original* model, and the cuts that ``shrink`` applied. Loading
builds the original, applies the same cuts (so every module gets its smaller arrays and
feature counts), and restores the saved variables into it.
"""

from __future__ import annotations

import importlib
import json
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from mobileprune_jax.surgery.shrink import Cuts, apply_cuts

SPEC_FILE = "architecture.json"
STATE_DIR = "state"


def _resolve(factory: str):
  module, _, attr = factory.partition(":")
  if not module or not attr:
    raise ValueError(f"factory must look like 'package.module:function', got {factory!r}")
  fn = importlib.import_module(module)
  for part in attr.split("."):
    fn = getattr(fn, part)
  return fn


def build(factory: str, kwargs: dict[str, Any], cuts: Cuts | None = None) -> nnx.Module:
  """Builds ``factory(**kwargs)`` and applies ``cuts`` (weights are whatever init gives)."""
  model = _resolve(factory)(**kwargs)
  return apply_cuts(model, cuts) if cuts else model


def save(directory: str | pathlib.Path, model: nnx.Module, *, factory: str, kwargs: dict[str, Any],
         cuts: Cuts | None = None) -> pathlib.Path:
  """Writes ``architecture.json`` and the model's variables (orbax) under ``directory``.

  Args:
    directory: where to write (created; an existing state there is replaced).
    model: the (shrunk) model to save.
    factory: importable callable that builds the original model, ``"pkg.mod:fn"``.
    kwargs: JSON-serialisable keyword arguments for it.
    cuts: the cuts that turn the original into ``model`` (``ShrinkReport.cuts``).
  """
  directory = pathlib.Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  spec = {"format": "mobileprune_jax/shrunk-model/v1", "factory": factory, "kwargs": kwargs, "cuts": cuts or {}}
  (directory / SPEC_FILE).write_text(json.dumps(spec, indent=1))
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(directory / STATE_DIR, nnx.state(model), force=True)
  checkpointer.wait_until_finished()
  return directory


def load(directory: str | pathlib.Path) -> nnx.Module:
  """Rebuilds a model saved with ``save``: same module structure, same outputs."""
  directory = pathlib.Path(directory).absolute()
  spec_path = directory / SPEC_FILE
  if not spec_path.exists():
    raise FileNotFoundError(f"no {SPEC_FILE} in {directory}")
  spec = json.loads(spec_path.read_text())
  cuts = {path: [(int(axis), list(keep)) for axis, keep in axes] for path, axes in spec["cuts"].items()}
  model = build(spec["factory"], spec["kwargs"], cuts)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(model))
  restored = ocp.StandardCheckpointer().restore(directory / STATE_DIR, abstract)
  nnx.update(model, restored)
  return model
