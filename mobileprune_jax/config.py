"""Run configs: Python files with ``get_config()`` (ml_collections), dotted overrides, validation.

    python -m mobileprune_jax run --config experiments/configs/lenet5_mobileprune.py \\
        --workdir runs/lenet5 --config.prune.iterations=2 --config.coef.l0=1e-4

``base_config()`` is a *locked* ``ConfigDict``: a config file or an override can only set keys
it has (at any depth; ``model_kwargs`` is open and checked by building the model), with the
type it has (``ConfigDict``'s type safety). ``validate`` then checks every value's range.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import pathlib
import re
import sys
import types
from typing import Any

import ml_collections

from mobileprune_jax import data, models
from mobileprune_jax.methods import BUDGET_METHODS, METHODS  # noqa: F401 - the registry is methods.REGISTRY

MODES = ("prox_sgd", "palm")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine", "step")
QUANTIZE = (None, "float16", "dynamic_int8", "int8")
# keys that hold None when unset; the values older configs used for "unset" still mean the same (SENTINELS)
SENTINELS = {"train_subset": 0, "test_subset": 0, "pad_to": 0, "init_from": "", "prune.steps": 0,
             "budget.interval": 0, "export.quantize": ""}
NULLABLE = frozenset(SENTINELS) | {"budget.nonzero", "budget.params", "budget.macs", "degl.rt_scale",
                                   "distributed.coordinator", "distributed.num_processes", "distributed.process_id"}


def _unset(field_type: type) -> ml_collections.FieldReference:
  return ml_collections.FieldReference(None, field_type=field_type)
CONV_GROUPINGS = ("input_channel_tree", "output_filter")
DEGL_SELECTIONS = ("prox", "subgradient")


class ConfigError(ValueError):
  """A config that cannot run; the message is one line saying what is wrong."""


def base_config() -> ml_collections.ConfigDict:
  """Every key a run understands, with defaults (configs override what they need)."""
  c = ml_collections.ConfigDict()
  c.name = "run"
  c.dataset = "mnist_subset"
  c.data_dir = ""
  c.fold = 0  # HAR: validation fold
  c.train_subset = _unset(int)  # use only the first N training examples (None = all; 0, the old spelling, too)
  c.test_subset = _unset(int)
  c.val_fraction = 0.0  # hold out this fraction of the training data as the validation split (drawn by the seed)
  c.augment_shift = 0  # images: translate training batches by up to N pixels (random, zero-filled)
  c.init_from = _unset(str)  # a model directory (``model/`` of a dense run) whose weights start the run instead of the init
  c.pad_to = _unset(int)  # zero-pad images to pad_to × pad_to (e.g. 28×28 Fashion-MNIST → 32×32 for CIFAR-size models)
  c.model = "lenet5"
  c.model_kwargs = ml_collections.ConfigDict()
  c.method = "mobileprune"
  c.mode = "prox_sgd"  # mobileprune and the prox baselines: prox_sgd or palm
  c.seed = 0
  c.batch_size = 128
  c.eval_batch_size = 500
  c.data_parallel = True  # shard batches over all local devices
  c.checkpoint_every_steps = 200  # also at every epoch end and phase start
  c.checkpoint_keep = 3  # newest checkpoints kept (older ones are the fallback if the newest is damaged)
  c.progress = True

  # schedule: constant | cosine (to 0 over the phase) | step (×0.1 after 1/3 and 2/3 of the phase); momentum: SGD's
  # momentum or Adam's b1 (0: none for both)
  c.pretrain = ml_collections.ConfigDict(dict(epochs=5, optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0,
                                              schedule="constant"))
  # MobilePrune schedule (docs/algorithms.md §B): T iterations of P pruning epochs (or steps) then R retraining epochs;
  # palm_warm_start: each PALM block starts its backtracking near its last L instead of at 1 (train/palm.py)
  c.prune = ml_collections.ConfigDict(dict(iterations=2, epochs=2, lr=0.05, momentum=0.9,
                                           palm_max_backtracks=100, palm_gamma=1.1, palm_warm_start=False))
  c.prune.steps = _unset(int)  # prune for this many steps instead of `epochs` (None: epochs)
  c.retrain = ml_collections.ConfigDict(dict(epochs=2, optimizer="adam", lr=1e-3, momentum=0.9, weight_decay=0.0,
                                             schedule="constant"))
  # coupled: the group terms act on the model's coupled units (Regulariser.for_model: every reader of a residual
  # stream channel, a depthwise chain, a flattened channel's rows, a head); False: per-layer groups (the papers')
  c.coef = ml_collections.ConfigDict(dict(l0=2e-4, neuron=2e-4, channel=1e-3, shape=1e-3, l1=1e-4, l2=1e-4,
                                          conv_grouping="input_channel_tree", coupled=True))
  # DEGL (docs/algorithms.md §H): EGL selection for `select_epochs`, threshold t_th, debiased retraining
  c.degl = ml_collections.ConfigDict(dict(select_epochs=5, lr=0.05, momentum=0.9, gamma=5e-3, lam=1e-4,
                                          t_th=1e-2, retrain_epochs=3))
  # the paper's procedure as options: selection "prox" (exact prox-SGD, zeroes groups while training; default) or
  # "subgradient" (SGD on L + R, the paper's; groups go only at the threshold); plateau_patience > 0: the select and
  # debias learning rates × plateau_factor when the epoch's mean training loss has not improved for that many epochs
  c.degl.selection = "prox"
  c.degl.plateau_patience = 0
  c.degl.plateau_factor = 0.1
  # debiasing ridge λ_rt = rt_scale · λ (docs/algorithms.md §H); None = 1
  c.degl.rt_scale = ml_collections.FieldReference(None, field_type=float)
  # magnitude: train (pretrain section), then zero conv weights with |w| <= threshold (global), then
  # optional masked retraining -- the HAR notebooks' procedure (docs/algorithms.md §F, "har_mode=paper_code")
  c.magnitude = ml_collections.ConfigDict(dict(threshold=0.015, layers="conv"))
  c.export = ml_collections.ConfigDict(dict(tflite=False))
  c.export.quantize = _unset(str)  # None (float32 only), "float16", "dynamic_int8" or "int8" (calibrated)
  # surgery keeps every cut layer's width a multiple of round_to (or unchanged); the budget measures the rounded model
  c.round_to = 1
  # prune to a budget (train/budget.py): fractions of the dense model, unset = no budget; a controller adapts one
  # multiplier on the penalty every `interval` steps of the penalised phases (None: eight times per epoch), the wanted
  # size ramping down to the target over the first `ramp` of the first penalised phase
  c.budget = ml_collections.ConfigDict(dict(tolerance=0.1, gain=0.15, proportional=3.0, ramp=0.6))
  c.budget.interval = _unset(int)
  for kind in ("nonzero", "params", "macs"):
    c.budget[kind] = ml_collections.FieldReference(None, field_type=float)
  # several processes / hosts (train/distributed.py): all three set, or none (a single process, or a
  # jax.distributed the caller started)
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator = ml_collections.FieldReference(None, field_type=str)  # HOST:PORT of process 0
  c.distributed.num_processes = ml_collections.FieldReference(None, field_type=int)
  c.distributed.process_id = ml_collections.FieldReference(None, field_type=int)
  c.lock()
  c.model_kwargs.unlock()  # checked against the model's constructor when it is built
  return c


def import_file(path: str | pathlib.Path) -> types.ModuleType:
  """Imports a Python file as a module, inside its package when its folder has ``__init__.py``.

  ``experiments/configs/offline.py`` becomes ``experiments.configs.offline``, so configs
  share code with relative imports (``from . import common``) and need no ``sys.path`` edits.
  """
  path = pathlib.Path(path).resolve()
  parts, root = [path.stem], path.parent
  while (root / "__init__.py").exists():
    parts.insert(0, root.name)
    root = root.parent
  for i in range(1, len(parts)):
    package, directory = ".".join(parts[:i]), root.joinpath(*parts[:i])
    loaded = sys.modules.get(package)
    if loaded is None or list(getattr(loaded, "__path__", [])) != [str(directory)]:
      spec = importlib.util.spec_from_file_location(package, directory / "__init__.py",
                                                    submodule_search_locations=[str(directory)])
      module = importlib.util.module_from_spec(spec)
      sys.modules[package] = module
      spec.loader.exec_module(module)
  name = ".".join(parts)
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def load_config(path: str | pathlib.Path) -> ml_collections.ConfigDict:
  """Runs ``get_config()`` of a config file and sets its entries on ``base_config()``.

  ``"file.py:arg"`` calls ``get_config("arg")`` (as flax's config flags do), so one file can
  describe a grid, e.g. ``experiments/configs/offline.py:lenet5,l1_sgl,mnist_subset``.

  Raises:
    ConfigError: no such file, no ``get_config``, a bad argument, an unknown key or a value
      of the wrong type.
  """
  text = str(path)
  arg = None
  if not pathlib.Path(text).exists() and ":" in text:
    text, _, arg = text.rpartition(":")
  path = pathlib.Path(text)
  if path.is_dir():
    raise ConfigError(f"config file {str(path)!r} is a directory, not a Python file with get_config()")
  if not path.is_file():
    raise ConfigError(f"config file {str(path)!r} does not exist")
  if path.suffix != ".py":
    raise ConfigError(f"config file {str(path)!r} is not a Python file (.py with get_config())")
  try:
    module = import_file(path)
  except SyntaxError as e:
    raise ConfigError(f"config file {str(path)!r} is not valid Python: {e.msg} (line {e.lineno})") from None
  except Exception as e:  # noqa: BLE001 - whatever the file's own code raised, in one line
    raise ConfigError(f"config file {str(path)!r} failed to import: {_raised(e)}") from None
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"config file {str(path)!r} has no get_config()")
  call = f"get_config({arg!r})" if arg is not None else "get_config()"
  try:
    new = module.get_config(arg) if arg is not None else module.get_config()
  except (KeyError, ValueError) as e:
    if arg is None:
      raise ConfigError(f"config file {str(path)!r}: {call} raised {_raised(e)}") from None
    raise ConfigError(f"config file {str(path)!r}: bad argument {arg!r}: {e}") from None
  except Exception as e:  # noqa: BLE001
    raise ConfigError(f"config file {str(path)!r}: {call} raised {_raised(e)}") from None
  if not isinstance(new, (ml_collections.ConfigDict, dict)):
    raise ConfigError(f"config file {str(path)!r}: {call} returned {type(new).__name__}, not a ConfigDict")
  cfg = base_config()
  try:
    cfg.update(new)
  except KeyError as e:
    raise ConfigError(f"config file {str(path)!r}: unknown config key {_key_of(e)}") from None
  except TypeError as e:
    raise ConfigError(f"config file {str(path)!r}: {_type_message(e)}") from None
  return cfg


def _raised(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _key_of(error: KeyError) -> str:
  text = str(error.args[0]) if error.args else str(error)
  return repr(text.split('"')[1]) if '"' in text else text


def _type_message(error: TypeError) -> str:
  return str(error).replace(" (reference)", "").split("\n")[0]


def _parse(text: str, field_type: type | None) -> Any:
  """``text`` as a value of ``field_type`` (the key's current type); other keys: a Python literal."""
  if field_type is bool:
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"{text!r} is not true/false")
    return text.lower() in ("true", "1")
  if field_type is int:
    return int(text)
  if field_type is float:
    return float(text)
  if field_type is str:
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
      return text[1:-1]
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: list[str]) -> None:
  """Applies ``--config.a.b=value`` overrides, parsing each value as the key's type.

  Raises:
    ConfigError: a malformed override, an unknown key, or a value of the wrong type.
  """
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
    if leaf not in node and not parents == ["model_kwargs"]:
      raise ConfigError(f"unknown config key {key!r}")
    if leaf in node and isinstance(node[leaf], ml_collections.ConfigDict):
      raise ConfigError(f"config key {key!r} is a section; set its entries (--config.{key}.NAME=VALUE)")
    field_type = node.get_type(leaf) if leaf in node else None
    if text == "None" and leaf in node and key in NULLABLE:  # unset: budget targets, subsets, init_from, …
      node[leaf] = None
      continue
    try:
      value = _parse(text, field_type)
    except ValueError:
      raise ConfigError(f"config key {key!r} takes a {field_type.__name__}, got {text!r}") from None
    try:
      node[leaf] = value
    except TypeError as e:
      raise ConfigError(f"config key {key!r}: {_type_message(e)}") from None


def leaves(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
  """``[(dotted key, value)]`` of every leaf of a config, dict or list (``"prune.lr"``, ``"a.0.b"``)."""
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    return [item for k, v in node.items() for item in leaves(v, f"{prefix}{k}.")]
  if isinstance(node, (list, tuple)):
    return [item for i, v in enumerate(node) for item in leaves(v, f"{prefix}{i}.")]
  return [(prefix.rstrip("."), node)]


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ConfigError(message)


def check_distributed(cfg: ml_collections.ConfigDict) -> None:
  """Checks ``cfg.distributed`` (raises ConfigError, one line) before anything starts."""
  d = cfg.distributed
  if d.coordinator is not None and not re.fullmatch(r"\[?[\w.\-:]+\]?:\d{1,5}", str(d.coordinator)):
    raise ConfigError(f"distributed.coordinator must be HOST:PORT (e.g. localhost:12355), got {d.coordinator!r}")
  n = d.num_processes
  if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
    raise ConfigError(f"distributed.num_processes must be a positive integer, got {n!r}")
  i = d.process_id
  if i is not None and (not isinstance(i, int) or isinstance(i, bool) or i < 0 or (n is not None and i >= n)):
    raise ConfigError(f"distributed.process_id must be an integer in [0, num_processes), got {i!r}")
  if d.coordinator is not None and (n is None or i is None):
    raise ConfigError("distributed.coordinator needs distributed.num_processes and distributed.process_id too")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Checks names and every number before anything is trained; raises ConfigError (one line)."""
  for name, value in leaves(cfg):
    if isinstance(value, float):
      _check(math.isfinite(value), f"config value {name} must be finite, got {value!r}")
  _check(cfg.model in models.MODELS, f"unknown model {cfg.model!r}; choose one of {sorted(models.MODELS)}")
  _check(cfg.dataset in data.LOADERS, f"unknown dataset {cfg.dataset!r}; choose one of {sorted(data.LOADERS)}")
  _check(cfg.method in METHODS, f"unknown method {cfg.method!r}; choose one of {METHODS}")
  _check(cfg.mode in MODES, f"unknown mode {cfg.mode!r}; choose one of {MODES}")
  for section in ("pretrain", "retrain"):
    _check(cfg[section].optimizer in OPTIMIZERS,
           f"{section}.optimizer must be one of {OPTIMIZERS}, got {cfg[section].optimizer!r}")
    _check(cfg[section].schedule in SCHEDULES,
           f"{section}.schedule must be one of {SCHEDULES}, got {cfg[section].schedule!r}")
  _check(cfg.magnitude.layers in ("conv", "all"), f"magnitude.layers must be 'conv' or 'all', got {cfg.magnitude.layers!r}")
  _check(cfg.coef.conv_grouping in CONV_GROUPINGS,
         f"coef.conv_grouping must be one of {CONV_GROUPINGS}, got {cfg.coef.conv_grouping!r}")
  _check(cfg.export.quantize in (*QUANTIZE, ""),
         f"export.quantize must be one of {QUANTIZE}, got {cfg.export.quantize!r}")
  _check(_is_int(cfg.seed) and 0 <= cfg.seed < 2**32, f"seed must be an integer in [0, 2**32), got {cfg.seed!r}")
  for name in ("batch_size", "eval_batch_size", "checkpoint_keep", "round_to"):
    _check(_is_int(cfg[name]) and cfg[name] >= 1, f"{name} must be a positive integer, got {cfg[name]!r}")
  counts = {"checkpoint_every_steps": cfg.checkpoint_every_steps, "fold": cfg.fold, "pad_to": cfg.pad_to,
            "augment_shift": cfg.augment_shift,
            "train_subset": cfg.train_subset,
            "test_subset": cfg.test_subset, "prune.iterations": cfg.prune.iterations, "prune.steps": cfg.prune.steps,
            "prune.palm_max_backtracks": cfg.prune.palm_max_backtracks, "degl.select_epochs": cfg.degl.select_epochs,
            "degl.retrain_epochs": cfg.degl.retrain_epochs, "degl.plateau_patience": cfg.degl.plateau_patience}
  counts |= {f"{s}.epochs": cfg[s].epochs for s in ("pretrain", "prune", "retrain")}
  for name, value in counts.items():
    _check((value is None and name in NULLABLE) or (_is_int(value) and value >= 0), f"config value {name} must be a non-negative integer, got {value!r}")
  numbers = {f"coef.{k}": v for k, v in cfg.coef.items() if k not in ("conv_grouping", "coupled")}
  _check(isinstance(cfg.coef.coupled, bool), f"coef.coupled must be True or False, got {cfg.coef.coupled!r}")
  _check(not (cfg.coef.coupled and cfg.coef.conv_grouping == "output_filter" and cfg.method == "mobileprune"),
         "coef.coupled=True needs coef.conv_grouping='input_channel_tree' (units group what a kernel reads); "
         "set coef.coupled=False for the output-filter grouping")
  numbers |= {f"degl.{k}": cfg.degl[k] for k in ("lr", "momentum", "gamma", "lam", "t_th")}
  numbers |= {f"{s}.{k}": cfg[s][k] for s in ("pretrain", "prune", "retrain") for k in ("lr", "momentum")}
  numbers |= {f"{s}.weight_decay": cfg[s].weight_decay for s in ("pretrain", "retrain")}
  numbers["magnitude.threshold"] = cfg.magnitude.threshold
  for name, value in numbers.items():
    _check(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
           f"config value {name} must be a non-negative number, got {value!r}")
  for name in ("pretrain.momentum", "prune.momentum", "retrain.momentum", "degl.momentum"):
    _check(numbers[name] < 1, f"config value {name} must be in [0, 1), got {numbers[name]!r}")
  _check(isinstance(cfg.val_fraction, (int, float)) and 0 <= cfg.val_fraction < 1,
         f"val_fraction must be in [0, 1), got {cfg.val_fraction!r}")
  _check(isinstance(cfg.prune.palm_warm_start, bool),
         f"prune.palm_warm_start must be True or False, got {cfg.prune.palm_warm_start!r}")
  _check(cfg.prune.palm_gamma > 1, f"prune.palm_gamma must be > 1, got {cfg.prune.palm_gamma!r}")
  for kind in ("nonzero", "params", "macs"):
    value = cfg.budget[kind]
    _check(value is None or 0 < value <= 1, f"budget.{kind} must be a fraction in (0, 1] or unset, got {value!r}")
  if any(cfg.budget[k] is not None for k in ("nonzero", "params", "macs")):
    _check(cfg.method in BUDGET_METHODS,
           f"a budget needs a method with a sparsifying penalty ({', '.join(BUDGET_METHODS)}), got {cfg.method!r}")
  _check(0 < cfg.budget.tolerance < 1, f"budget.tolerance must be in (0, 1), got {cfg.budget.tolerance!r}")
  _check(cfg.budget.gain > 0, f"budget.gain must be > 0, got {cfg.budget.gain!r}")
  check_distributed(cfg)
  _check(cfg.budget.proportional >= 0, f"budget.proportional must be >= 0, got {cfg.budget.proportional!r}")
  _check(0 <= cfg.budget.ramp <= 1, f"budget.ramp must be in [0, 1], got {cfg.budget.ramp!r}")
  _check(cfg.budget.interval is None or (_is_int(cfg.budget.interval) and cfg.budget.interval >= 0),
         f"budget.interval must be a non-negative integer or None, got {cfg.budget.interval!r}")
  _check(cfg.degl.selection in DEGL_SELECTIONS,
         f"degl.selection must be one of {DEGL_SELECTIONS}, got {cfg.degl.selection!r}")
  _check(0 < cfg.degl.plateau_factor < 1, f"degl.plateau_factor must be in (0, 1), got {cfg.degl.plateau_factor!r}")
  rt_scale = cfg.degl.rt_scale
  _check(rt_scale is None or 0 < rt_scale <= 1, f"degl.rt_scale must be in (0, 1] or None, got {rt_scale!r}")
