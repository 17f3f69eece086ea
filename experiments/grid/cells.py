"""The cells of the budget grid and where their run directories live.

A cell is (data set, model, method, budget, seed); ``method == "dense"`` (budget None) is the
dense run every pruning cell of its (data set, model, seed) starts from.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

from mobileprune_jax import config as config_lib
from mobileprune_jax.config import import_file

HERE = pathlib.Path(__file__).resolve().parent.parent
CONFIG = HERE / "configs" / "budget_grid.py"
grid_config = import_file(CONFIG)

METHODS = grid_config.METHODS
BUDGETS = grid_config.BUDGETS
MODELS = {"mnist_subset": ("lenet5", "lenet300"), "basic_motions": ("har_cnn",), "fashion_mnist_idx": ("lenet5", "mobilenet_v2")}
SEEDS = {"mnist_subset": (0, 1, 2), "basic_motions": (0, 1, 2), "fashion_mnist_idx": (0, 1, 2)}  # seed-major: all of seed 0 first


@dataclasses.dataclass(frozen=True)
class Cell:
  dataset: str
  model: str
  method: str
  budget: float | None
  seed: int

  @property
  def config_arg(self) -> str:
    base = f"{self.model},{self.method},{self.dataset}"
    return base if self.budget is None else f"{base},{self.budget:g}"

  @property
  def config_string(self) -> str:
    """The exact config of the cell (the runner adds ``init_from`` = its dense cell's ``model/``)."""
    return f"experiments/configs/budget_grid.py:{self.config_arg} --config.seed={self.seed}"

  def workdir(self, runs: pathlib.Path) -> pathlib.Path:
    tag = "dense" if self.budget is None else f"{self.method}_b{self.budget:g}"
    return runs / self.dataset / f"{self.model}_{tag}_s{self.seed}"

  def dense(self) -> Cell:
    return dataclasses.replace(self, method="dense", budget=None)


def cells(datasets, models=None, methods=None, budgets=None, seeds=None) -> list[Cell]:
  """Seed-major order (every method and budget at seed 0 before seed 1): a cut grid covers all of them."""
  out = []
  for seed in range(3):
    for dataset in datasets:
      if seed not in SEEDS[dataset] or (seeds is not None and seed not in seeds):
        continue
      for model in MODELS[dataset]:
        if models and model not in models:
          continue
        out.append(Cell(dataset, model, "dense", None, seed))
        out += [Cell(dataset, model, method, budget, seed) for budget in (budgets or BUDGETS)
                for method in (methods or METHODS)]
  return out


def wall_seconds(workdir: pathlib.Path) -> float | None:
  """Wall-clock seconds a run took over all its sessions (``timing.jsonl``: each start to its last event)."""
  path = workdir / "timing.jsonl"
  if not path.exists():
    return None
  total, start, last = 0.0, None, None
  for line in path.read_text().splitlines():
    event = json.loads(line)
    if event["event"] == "start":
      if start is not None:
        total += last - start
      start = event["time"]
    last = event["time"]
  return total + (last - start if start is not None else 0.0)


def summary(workdir: pathlib.Path) -> dict[str, Any] | None:
  path = workdir / "summary.json"
  return json.loads(path.read_text()) if path.exists() else None


def cell_config(cell: Cell, runs: pathlib.Path, extra: Sequence[str] = ()):
  """The config a cell runs with (its dense cell's model as ``init_from``) plus ``extra`` overrides."""
  cfg = config_lib.load_config(f"{CONFIG}:{cell.config_arg}")
  overrides = [f"seed={cell.seed}", "progress=False", *extra]
  if cell.budget is not None:
    overrides.append(f"init_from={cell.dense().workdir(runs).resolve() / 'model'}")
  config_lib.apply_overrides(cfg, overrides)
  return cfg


def recorded_extra(workdir: pathlib.Path) -> list[str]:
  """The ``--set`` overrides a cell was started with (from its ``cell.json``)."""
  info = json.loads((workdir / "cell.json").read_text()) if (workdir / "cell.json").exists() else {}
  return [part[len("--config."):] for part in info.get("config", "").split() if part.startswith("--config.")
          and not part.startswith("--config.seed=")]
