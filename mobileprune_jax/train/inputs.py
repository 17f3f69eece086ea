"""What a run needs before it trains: checked data, the model, and the batch geometry.

Every problem found here is a ``ConfigError`` / ``InvalidDataError`` / ``DataUnavailableError``
with a one-line message, raised before anything is trained or written.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from mobileprune_jax import data as data_lib
from mobileprune_jax import models, surgery
from mobileprune_jax.config import ConfigError
from mobileprune_jax.train.steps import Placement


def load_data(cfg: ml_collections.ConfigDict) -> data_lib.Dataset:
  """The config's data set, checked (finite inputs, labels in range), cut to the subsets asked for."""
  options = {"fold": cfg.fold} if cfg.dataset in ("wisdm", "uci_har", "pamap2") else {}
  ds = data_lib.load(cfg.dataset, cfg.data_dir or None, **options)
  if cfg.train_subset or cfg.test_subset:
    ds = ds.subset(cfg.train_subset or None, cfg.test_subset or None)
  if cfg.pad_to:
    ds = pad_images(ds, cfg.pad_to)
  if cfg.val_fraction:
    try:
      ds = data_lib.splits.hold_out(ds, cfg.val_fraction, cfg.seed)
    except ValueError as e:
      raise ConfigError(str(e)) from None
  if cfg.augment_shift and len(ds.input_shape) != 3:
    raise ConfigError(f"augment_shift needs images (N, H, W, C); {ds.name} has inputs {ds.input_shape}")
  return ds


def pad_images(ds: data_lib.Dataset, size: int) -> data_lib.Dataset:
  """Zero-pads (N, H, W, C) images to size × size, centred.

  Raises:
    ConfigError: the data are not images, or are larger than ``size``.
  """
  if len(ds.input_shape) != 3 or max(ds.input_shape[:2]) > size:
    raise ConfigError(f"pad_to={size} needs images of at most {size}×{size}, {ds.name} has inputs {ds.input_shape}")

  def pad(x):
    h, w = x.shape[1:3]
    return np.pad(x, ((0, 0), ((size - h) // 2, size - h - (size - h) // 2), ((size - w) // 2, size - w - (size - w) // 2),
                      (0, 0)))

  arrays = {k: pad(getattr(ds, k)) for k in ("train_x", "test_x") }
  if ds.val_x is not None:
    arrays["val_x"] = pad(ds.val_x)
  return dataclasses.replace(ds, **arrays)


def model_spec(cfg: ml_collections.ConfigDict, ds: data_lib.Dataset) -> dict[str, Any]:
  """The zoo name and keyword arguments that build the config's model for ``ds``."""
  kwargs = dict(cfg.model_kwargs)
  kwargs.setdefault("num_classes", ds.num_classes)
  if cfg.model == "har_cnn":
    kwargs.setdefault("in_channels", ds.input_shape[-1])
    kwargs.setdefault("window", ds.input_shape[0])
    kwargs.setdefault("kernel", 5)
  return {"name": cfg.model, "seed": cfg.seed, "kwargs": kwargs}


def create_model(cfg: ml_collections.ConfigDict, ds: data_lib.Dataset) -> tuple[nnx.Module, dict[str, Any]]:
  """The freshly initialised model and its spec (``model_spec``).

  Raises:
    ConfigError: ``model_kwargs`` the model's constructor does not take, or values it rejects.
  """
  spec = model_spec(cfg, ds)
  try:
    model = models.create(cfg.model, seed=cfg.seed, **spec["kwargs"])
  except (TypeError, ValueError) as e:
    raise ConfigError(f"model {cfg.model!r} cannot be built with model_kwargs {dict(cfg.model_kwargs)}: "
                      f"{str(e).splitlines()[0]}") from None
  return model, spec


def check_classes(cfg: ml_collections.ConfigDict, ds: data_lib.Dataset, output_shapes: list[tuple[int, ...]]) -> None:
  """Checks that the model has an output for every label of the data.

  Raises:
    ConfigError: the model's last axis (e.g. ``model_kwargs.num_classes``) is smaller than the data's labels.
  """
  if len(output_shapes) != 1 or not output_shapes[0]:
    return  # not a classifier with one output: nothing to compare
  outputs = output_shapes[0][-1]
  labels = [int(y.max()) for y in (ds.train_y, ds.test_y, ds.val_y) if y is not None and len(y)]
  if labels and max(labels) >= outputs:
    raise ConfigError(f"model {cfg.model!r} has {outputs} outputs but {ds.name}'s labels go up to {max(labels)} "
                      f"({ds.num_classes} classes); drop model_kwargs.num_classes or set it to {ds.num_classes}")


def load_initial_weights(cfg: ml_collections.ConfigDict, model: nnx.Module) -> None:
  """Sets ``model``'s weights from the model directory ``cfg.init_from`` (a dense model of the same shape).

  Raises:
    ConfigError: no such directory, an unreadable model, or one whose parameters differ in shape.
  """
  directory = pathlib.Path(cfg.init_from)
  try:
    source = surgery.load(directory)
  except (OSError, surgery.ModelFileError) as e:
    raise ConfigError(f"init_from {cfg.init_from!r}: {str(e).splitlines()[0]}") from None
  weights = (nnx.Param, nnx.BatchStat)
  shapes = lambda m: [(jax.tree_util.keystr(p), a.shape)
                      for p, a in jax.tree_util.tree_leaves_with_path(nnx.state(m, weights))]
  if type(source) is not type(model) or shapes(source) != shapes(model):
    raise ConfigError(f"init_from {cfg.init_from!r} holds a {type(source).__name__} whose parameters do not match the "
                      f"config's {cfg.model} (a shrunk model, or other model_kwargs)")
  nnx.update(model, nnx.state(source, weights))


@dataclasses.dataclass(frozen=True)
class BatchPlan:
  """Mini-batches per epoch and the devices the batches are sharded over."""

  steps_per_epoch: int
  placement: Placement


def plan_batches(cfg: ml_collections.ConfigDict, ds: data_lib.Dataset) -> BatchPlan:
  """Checks the batch size against the data and the devices.

  Raises:
    ConfigError: a batch larger than the training split, or not a multiple of the devices.
  """
  if cfg.batch_size > len(ds.train_x):
    raise ConfigError(f"batch_size {cfg.batch_size} is larger than the {len(ds.train_x)} training examples of "
                      f"{ds.name}")
  placement = Placement(jax.devices() if cfg.data_parallel else jax.devices()[:1])
  if cfg.batch_size % placement.size:
    raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of the {placement.size} devices it is "
                      "sharded over (or set --config.data_parallel=False)")
  return BatchPlan(len(ds.train_x) // cfg.batch_size, placement)
