"""Save and load shrunk models as data, never code: a JSON spec plus a checksummed tensor file.

``architecture.json`` names the *original* model by a **registered name** (the model zoo's
names, factories registered with ``register``, or ones passed to ``load``), its JSON keyword
arguments, and the cuts that ``shrink`` applied. Loading builds the original through the
registry, applies the same cuts, and fills in the weights from ``weights.safetensors``
(``tensorfile``: SHA-256 per array, and the file's SHA-256 recorded in the spec). Nothing a
model file says is imported or executed: an unregistered name is an error, whatever it
looks like.

Files written by version 1 (``"factory": "mobileprune_jax.models:create"`` and an orbax
``state/`` directory) still load; any other ``factory`` string is refused.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax import models, tensorfile, tree_arrays
from mobileprune_jax.surgery.shrink import Cuts, apply_cuts, variables_by_path

SPEC_FILE = "architecture.json"
WEIGHTS_FILE = "weights.safetensors"
STATE_DIR = "state"  # version 1 (orbax)
FORMAT = "mobileprune_jax/shrunk-model/v2"
_V1_FORMAT = "mobileprune_jax/shrunk-model/v1"
_V1_ZOO_FACTORY = "mobileprune_jax.models:create"

Factory = Callable[..., nnx.Module]
_REGISTRY: dict[str, Factory] = {}


class ModelFileError(ValueError):
  """A model directory that cannot be loaded safely (unknown model, damaged files); one line."""


def register(name: str, factory: Factory) -> None:
  """Makes ``factory(**kwargs) -> nnx.Module`` loadable under ``name`` (e.g. your own models)."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"a model name must be a non-empty string, got {name!r}")
  _REGISTRY[name] = factory


def _zoo_factory(name: str) -> Factory:
  return lambda seed=0, **kwargs: models.create(name, seed=seed, **kwargs)


def _factory(name: Any, factories: Mapping[str, Factory] | None) -> Factory:
  if isinstance(name, str):
    if factories and name in factories:
      return factories[name]
    if name in _REGISTRY:
      return _REGISTRY[name]
    if name in models.MODELS:
      return _zoo_factory(name)
  known = sorted(set(models.MODELS) | set(_REGISTRY) | set(factories or ()))
  raise ModelFileError(f"model {name!r} is not registered (known: {', '.join(known)}); register a factory with "
                       "surgery.register(name, fn) or pass factories={name: fn} to load — model files never name code")


def build(model: str, kwargs: Mapping[str, Any], cuts: Cuts | None = None,
          factories: Mapping[str, Factory] | None = None) -> nnx.Module:
  """Builds the registered ``model(**kwargs)`` and applies ``cuts`` (weights are whatever init gives)."""
  if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
    raise ModelFileError(f"model kwargs must be a JSON object, got {kwargs!r}")
  try:
    module = _factory(model, factories)(**kwargs)
  except ModelFileError:
    raise
  except (TypeError, ValueError, OverflowError) as e:
    raise ModelFileError(f"model {model!r} cannot be built from kwargs {dict(kwargs)}: {e}") from None
  if not isinstance(module, nnx.Module):
    raise ModelFileError(f"the factory of {model!r} returned {type(module).__name__}, not an nnx.Module")
  return apply_cuts(module, cuts) if cuts else module


def _spec_name(factory: str, kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
  """(registered name, kwargs); version 1's zoo factory passes the name inside kwargs."""
  kwargs = dict(kwargs)
  if factory == _V1_ZOO_FACTORY:
    return kwargs.pop("name", None), kwargs
  return factory, kwargs


def save(directory: str | pathlib.Path, model: nnx.Module, *, factory: str, kwargs: Mapping[str, Any],
         cuts: Cuts | None = None) -> pathlib.Path:
  """Writes ``architecture.json`` and ``weights.safetensors`` under ``directory``, atomically.

  The files are byte-identical for identical inputs. An existing directory is replaced only
  once the new one is complete.

  Args:
    directory: where to write.
    model: the (shrunk) model to save.
    factory: the registered name of the original model (a zoo name such as ``"lenet5"``, or
      one given to ``register``).
    kwargs: JSON-serialisable keyword arguments that build the original.
    cuts: the cuts that turn the original into ``model`` (``ShrinkReport.cuts``).

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> class MLP(nnx.Module):
    ...   def __init__(self, rngs=nnx.Rngs(0)):
    ...     self.fc1, self.fc2 = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 3, rngs=rngs)
    ...   def __call__(self, x):
    ...     return self.fc2(nnx.relu(self.fc1(x)))
    >>> import tempfile
    >>> from mobileprune_jax import surgery
    >>> model = MLP()
    >>> model.fc2.kernel[...] = model.fc2.kernel[...].at[:5].set(0.0)
    >>> small, report = surgery.shrink_with_report(model, jnp.ones((2, 4)))
    >>> directory = surgery.save(tempfile.mkdtemp() + "/mlp", small, factory="mlp", kwargs={}, cuts=report.cuts)
    >>> loaded = surgery.load(directory, factories={"mlp": MLP})  # data, never code: the factory is yours
    >>> bool(jnp.all(loaded(jnp.ones((1, 4))) == small(jnp.ones((1, 4)))))
    True
  """
  directory = pathlib.Path(directory).absolute()
  name, kwargs = _spec_name(factory, kwargs)
  for stale in directory.parent.glob(f".{directory.name}.partial-*"):  # left by a killed save
    shutil.rmtree(stale, ignore_errors=True)
  partial = directory.with_name(f".{directory.name}.partial-{os.getpid()}")
  partial.mkdir(parents=True)
  digest = tensorfile.write(partial / WEIGHTS_FILE, tree_arrays.to_arrays(nnx.state(model)))
  spec = {"format": FORMAT, "model": name, "kwargs": kwargs, "cuts": cuts or {},
          "weights": {"file": WEIGHTS_FILE, "sha256": digest}}
  (partial / SPEC_FILE).write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
  old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
  if directory.exists():
    os.replace(directory, old)
  os.replace(partial, directory)
  for stale in directory.parent.glob(f".{directory.name}.old-*"):
    shutil.rmtree(stale, ignore_errors=True)
  return directory


def read_spec(directory: str | pathlib.Path) -> dict[str, Any]:
  """The validated ``architecture.json`` of a model directory (``model`` is a name, never code)."""
  path = pathlib.Path(directory).absolute() / SPEC_FILE
  try:
    spec = json.loads(path.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f"no {SPEC_FILE} in {path.parent}") from None
  except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
    raise ModelFileError(f"{path}: not readable JSON ({type(e).__name__}: {e})") from None
  if not isinstance(spec, dict) or spec.get("format") not in (FORMAT, _V1_FORMAT):
    raise ModelFileError(f"{path}: not a {FORMAT} file")
  if spec["format"] == _V1_FORMAT:
    factory = spec.get("factory")
    if factory != _V1_ZOO_FACTORY:
      raise ModelFileError(f"{path}: refusing factory {factory!r}: model files name a registered model, not "
                           "importable code")
    spec["model"], spec["kwargs"] = _spec_name(factory, spec.get("kwargs") or {})
  if not isinstance(spec.get("model"), str):
    raise ModelFileError(f"{path}: 'model' must be a registered model name, got {spec.get('model')!r}")
  try:
    spec["cuts"] = {str(p): [(_json_int(axis), [_json_int(i) for i in keep]) for axis, keep in axes]
                    for p, axes in (spec.get("cuts") or {}).items()}
  except (TypeError, ValueError, AttributeError) as e:
    raise ModelFileError(f"{path}: malformed 'cuts' ({e})") from None
  for p, axes in spec["cuts"].items():
    if any(axis < 0 or any(i < 0 for i in keep) or len(set(keep)) != len(keep) for axis, keep in axes):
      raise ModelFileError(f"{path}: cuts of {p!r} must be distinct non-negative indices")
  return spec


def _json_int(value: Any) -> int:
  """A JSON integer (``int(1.5)`` or ``int(True)`` would silently give an index)."""
  if type(value) is not int:
    raise TypeError(f"an index must be an integer, got {value!r}")
  return value


def build_original(directory: str | pathlib.Path, factories: Mapping[str, Factory] | None = None) -> nnx.Module:
  """The original (unshrunk, freshly initialised) model a saved model was cut from."""
  spec = read_spec(directory)
  return build(spec["model"], spec["kwargs"], factories=factories)


def load_expanded(directory: str | pathlib.Path, factories: Mapping[str, Factory] | None = None) -> nnx.Module:
  """The original architecture holding a saved model's weights at their original positions, zero where cut.

  Its outputs equal the saved model's (every cut channel's weights and readers are zero), so it can be
  shrunk again (e.g. with another ``round_to``) or trained on at full width.
  """
  small = load(directory, factories)
  spec = read_spec(directory)
  full = build(spec["model"], spec["kwargs"], factories=factories)
  cuts = {path: dict(axes) for path, axes in spec["cuts"].items()}
  small_vars = variables_by_path(small)
  for path, var in variables_by_path(full).items():
    if path not in small_vars:
      continue
    if path not in cuts:  # uncut: the saved value as it is (also RNG keys, e.g. a Dropout's, which numpy cannot hold)
      var.set_value(small_vars[path].get_value())
      continue
    value = np.asarray(small_vars[path].get_value())
    shape = np.shape(var.get_value())
    index = np.ix_(*[np.asarray(cuts[path].get(axis, range(n)), np.int64) for axis, n in enumerate(shape)])
    expanded = np.zeros(shape, value.dtype)
    expanded[index] = value
    var.set_value(jnp.asarray(expanded))
  return full


def load(directory: str | pathlib.Path, factories: Mapping[str, Factory] | None = None) -> nnx.Module:
  """Rebuilds a model saved with ``save``: same module structure, same outputs.

  Args:
    directory: a directory written by ``save``.
    factories: extra ``name -> factory`` for models that are not in the zoo or registered.

  Raises:
    ModelFileError: an unregistered model name, malformed spec, damaged or mismatched weights.
  """
  directory = pathlib.Path(directory).absolute()
  spec = read_spec(directory)
  try:
    model = build(spec["model"], spec["kwargs"], spec["cuts"], factories)
  except (KeyError, IndexError) as e:
    raise ModelFileError(f"{directory / SPEC_FILE}: cuts do not fit model {spec['model']!r} ({e})") from None
  if spec["format"] == _V1_FORMAT:
    return _load_v1_state(directory, model)
  weights = spec.get("weights") or {}
  if weights.get("file") != WEIGHTS_FILE:
    raise ModelFileError(f"{directory / SPEC_FILE}: 'weights.file' must be {WEIGHTS_FILE!r}")
  try:
    arrays, _ = tensorfile.read(directory / WEIGHTS_FILE, expected_sha256=weights.get("sha256"))
    nnx.update(model, tree_arrays.from_arrays(nnx.state(model), arrays))
  except (tensorfile.TensorFileError, tree_arrays.StateMismatchError) as e:
    raise ModelFileError(f"{directory}: {e}") from None
  return model


def _load_v1_state(directory: pathlib.Path, model: nnx.Module) -> nnx.Module:
  """Version 1 weights (orbax). They carry no checksums: a warning says so; save again to add them."""
  import orbax.checkpoint as ocp  # only for directories written before version 2

  warnings.warn(f"{directory} is a version-1 model directory, whose weights carry no checksums; "
                "surgery.save it again to get a checked weights.safetensors", stacklevel=3)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(model))
  try:
    restored = ocp.StandardCheckpointer().restore(directory / STATE_DIR, abstract)
  except Exception as e:  # orbax / TensorStore raise many types for damaged files
    raise ModelFileError(f"{directory / STATE_DIR}: the version-1 weights cannot be read "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
  nnx.update(model, restored)
  return model
