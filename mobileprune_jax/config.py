"""Run configs: Python files with ``get_config()`` (ml_collections), dotted overrides, validation.

    python -m mobileprune_jax run --config experiments/configs/lenet5_mobileprune.py \\
        --workdir runs/lenet5 --config.prune.iterations=2 --config.coef.l0=1e-4
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
from typing import Any

import ml_collections

METHODS = ("mobileprune", "l0", "l1", "l2", "group_lasso", "l1_sgl", "degl", "egl", "degl_group_lasso", "magnitude",
           "dense")
MODES = ("prox_sgd", "palm")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "step")


class ConfigError(ValueError):
  """A config that cannot run; the message is one line saying what is wrong."""


def base_config() -> ml_collections.ConfigDict:
  """Every key a run understands, with defaults (configs override what they need)."""
  c = ml_collections.ConfigDict()
  c.name = "run"
  c.dataset = "mnist_subset"
  c.data_dir = ""
  c.fold = 0  # HAR: validation fold
  c.train_subset = 0  # use only the first N training examples (0 = all)
  c.test_subset = 0
  c.model = "lenet5"
  c.model_kwargs = ml_collections.ConfigDict()
  c.method = "mobileprune"
  c.mode = "prox_sgd"  # mobileprune and the prox baselines: prox_sgd or palm
  c.seed = 0
  c.batch_size = 128
  c.eval_batch_size = 500
  c.data_parallel = True  # shard batches over all local devices
  c.checkpoint_every_steps = 200
  c.progress = True

  # schedule: constant | cosine (to 0 over the phase) | step (×0.1 after 1/3 and 2/3 of the phase)
  c.pretrain = ml_collections.ConfigDict(dict(epochs=5, optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0,
                                              schedule="constant"))
  # MobilePrune schedule (spec §B): T iterations of P pruning epochs (or steps) then R retraining epochs
  c.prune = ml_collections.ConfigDict(dict(iterations=2, epochs=2, steps=0, lr=0.05, momentum=0.9,
                                           palm_max_backtracks=100, palm_gamma=1.1))
  c.retrain = ml_collections.ConfigDict(dict(epochs=2, optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0,
                                             schedule="constant"))
  c.coef = ml_collections.ConfigDict(dict(l0=2e-4, neuron=2e-4, channel=1e-3, shape=1e-3, l1=1e-4, l2=1e-4,
                                          conv_grouping="input_channel_tree"))
  # DEGL (spec §H): EGL selection for `select_epochs`, threshold t_th, debiased retraining
  c.degl = ml_collections.ConfigDict(dict(select_epochs=5, lr=0.05, momentum=0.9, gamma=5e-3, lam=1e-4,
                                          t_th=1e-2, rt_scale=-1.0, retrain_epochs=3))
  # magnitude: train (pretrain section), then zero conv weights with |w| <= threshold (global), then
  # optional masked retraining -- the HAR notebooks' procedure (spec §F, "har_mode=paper_code")
  c.magnitude = ml_collections.ConfigDict(dict(threshold=0.015, layers="conv"))
  c.export = ml_collections.ConfigDict(dict(tflite=False, quantize=""))
  return c


def load_config(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Runs ``get_config()`` of a config file and merges it over ``base_config()``.

  ``"file.py:arg"`` calls ``get_config("arg")`` (as flax's config flags do), so one file can
  describe a grid, e.g. ``experiments/configs/offline.py:lenet5,l1_sgl,mnist_subset``.
  """
  text = str(path)
  arg = None
  if not pathlib.Path(text).exists() and ":" in text:
    text, _, arg = text.rpartition(":")
  path = pathlib.Path(text)
  if not path.exists():
    raise ConfigError(f"config file {str(path)!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {str(path)!r} has no get_config()")
  try:
    new = module.get_config(arg) if arg is not None else module.get_config()
  except TypeError as e:
    raise ConfigError(f"config file {str(path)!r}: get_config({arg!r}) failed: {e}") from e
  except (KeyError, ValueError) as e:
    raise ConfigError(f"config file {str(path)!r}: bad argument {arg!r}: {e}") from e
  cfg = base_config()
  _merge(cfg, new, prefix="")
  return cfg


def _merge(base: ml_collections.ConfigDict, new: Any, prefix: str) -> None:
  for key, value in new.items():
    name = f"{prefix}{key}"
    if key not in base:
      if prefix.startswith("model_kwargs"):
        base[key] = value
        continue
      raise ConfigError(f"unknown config key {name!r}")
    if isinstance(base[key], ml_collections.ConfigDict):
      if key == "model_kwargs":
        base[key] = ml_collections.ConfigDict(dict(value))
      else:
        _merge(base[key], value, prefix=f"{name}.")
    else:
      base[key] = value


def _parse(text: str) -> Any:
  low = text.lower()
  if low in ("true", "false"):
    return low == "true"
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: list[str]) -> None:
  """Applies ``config.a.b=value`` overrides; unknown keys and bad types are ConfigErrors."""
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise ConfigError(f"override {item!r} must look like --config.key=value")
    key = key.removeprefix("--").removeprefix("config.")
    *parents, leaf = key.split(".")
    node = cfg
    for p in parents:
      if p not in node or not isinstance(node[p], ml_collections.ConfigDict):
        raise ConfigError(f"unknown config key {key!r}")
      node = node[p]
    value = _parse(text)
    if leaf not in node and parents != ["model_kwargs"]:
      raise ConfigError(f"unknown config key {key!r}")
    if leaf in node and node[leaf] is not None and not isinstance(node[leaf], ml_collections.ConfigDict):
      old = node[leaf]
      if isinstance(old, bool) != isinstance(value, bool) or (isinstance(old, str) and not isinstance(value, str)):
        value = text if isinstance(old, str) else value
      if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
      if type(old) is not type(value) and not (isinstance(old, str) and isinstance(value, str)):
        raise ConfigError(f"config key {key!r} takes a {type(old).__name__}, got {text!r}")
    node[leaf] = value


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Checks names and numbers before anything is trained; raises ConfigError."""
  from mobileprune_jax import data, models

  if cfg.model not in models.MODELS:
    raise ConfigError(f"unknown model {cfg.model!r}; choose one of {sorted(models.MODELS)}")
  if cfg.dataset not in data.LOADERS:
    raise ConfigError(f"unknown dataset {cfg.dataset!r}; choose one of {sorted(data.LOADERS)}")
  if cfg.method not in METHODS:
    raise ConfigError(f"unknown method {cfg.method!r}; choose one of {METHODS}")
  if cfg.mode not in MODES:
    raise ConfigError(f"unknown mode {cfg.mode!r}; choose one of {MODES}")
  for section in ("pretrain", "retrain"):
    if cfg[section].optimizer not in OPTIMIZERS:
      raise ConfigError(f"{section}.optimizer must be one of {OPTIMIZERS}, got {cfg[section].optimizer!r}")
    if cfg[section].schedule not in SCHEDULES:
      raise ConfigError(f"{section}.schedule must be one of {SCHEDULES}, got {cfg[section].schedule!r}")
  numbers = {f"coef.{k}": v for k, v in cfg.coef.items() if k != "conv_grouping"}
  numbers |= {f"degl.{k}": v for k, v in cfg.degl.items() if k != "rt_scale"}
  numbers["magnitude.threshold"] = cfg.magnitude.threshold
  if cfg.magnitude.layers not in ("conv", "all"):
    raise ConfigError(f"magnitude.layers must be 'conv' or 'all', got {cfg.magnitude.layers!r}")
  for section in ("pretrain", "prune", "retrain"):
    numbers |= {f"{section}.{k}": v for k, v in cfg[section].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
  numbers |= {"batch_size": cfg.batch_size, "eval_batch_size": cfg.eval_batch_size}
  for name, value in numbers.items():
    if not isinstance(value, (int, float)) or value < 0:
      raise ConfigError(f"config value {name} must be a non-negative number, got {value!r}")
  if cfg.batch_size < 1:
    raise ConfigError("batch_size must be at least 1")
