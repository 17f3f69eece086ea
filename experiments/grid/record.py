"""One small committed record per finished grid cell (``experiments/results/cells/``): what the tables are made of.

A record holds the cell, its exact config, the commit it started on and the one it finished on (a cell resumed
under newer code says so), its wall time, the summary numbers the tables use, and the per-example correctness of
the final model on the test split (``test_correct``: one bit per test example, hex) — what paired tests between
methods on the same seed need. ``python -m experiments.grid.report`` reads only these records, so every table can
be checked and regenerated from the repository alone.

    python -m experiments.grid.record --runs runs/grid    # (re)writes the records of every finished cell

The runner writes a cell's record as the cell finishes. The model's correctness is recomputed from ``model/``
and must give the summary's test accuracy (a record never disagrees with its run).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
from typing import Any

import numpy as np

from experiments.grid import cells as cells_lib

CELLS = cells_lib.HERE / "results" / "cells"
SUMMARY_KEYS = ("name", "dataset", "model", "method", "mode", "seed", "base_accuracy", "pruned_accuracy",
                "base_val_accuracy", "val_accuracy", "train_size", "val_size", "test_size", "params_total",
                "params_remaining", "nonzero_params", "macs_dense", "macs_pruned", "architecture_dense",
                "architecture", "budget")


def path_of(cell: cells_lib.Cell, root: pathlib.Path = CELLS) -> pathlib.Path:
  return root / cell.dataset / f"{cell.workdir(pathlib.Path('.')).name}.json"


def encode_bits(correct: np.ndarray) -> str:
  """A boolean vector as hex (8 examples per byte, the first example in the highest bit)."""
  return np.packbits(np.asarray(correct, bool)).tobytes().hex()


def decode_bits(text: str, n: int) -> np.ndarray:
  """``encode_bits``' inverse for a vector of length ``n``."""
  return np.unpackbits(np.frombuffer(bytes.fromhex(text), np.uint8))[:n].astype(bool)


def test_correct(cfg, workdir: pathlib.Path) -> np.ndarray:
  """Per test example: whether the run's saved final model predicts its label (the cell's own data pipeline)."""
  import jax.numpy as jnp

  from mobileprune_jax import surgery
  from mobileprune_jax.train import inputs
  from mobileprune_jax.train.steps import predict

  ds = inputs.load_data(cfg)
  model = surgery.load(workdir / "model")
  out = [np.asarray(predict(model, jnp.asarray(ds.test_x[i:i + 500]))) for i in range(0, len(ds.test_x), 500)]
  return np.concatenate(out) == np.asarray(ds.test_y)


def make(cell: cells_lib.Cell, cfg, workdir: pathlib.Path) -> dict[str, Any]:
  """The record of a finished cell (raises ValueError when its model does not give its summary's accuracy)."""
  summary = cells_lib.summary(workdir)
  info = json.loads((workdir / "cell.json").read_text()) if (workdir / "cell.json").exists() else {}
  correct = test_correct(cfg, workdir)
  if abs(correct.sum() - summary["pruned_accuracy"] * len(correct)) > 2:  # the shrunk model: same outputs to ~1e-6
    raise ValueError(f"{workdir}: the saved model scores {correct.mean():.4f} on the test split, its summary "
                     f"{summary['pruned_accuracy']:.4f}")
  return {"cell": {"dataset": cell.dataset, "model": cell.model, "method": cell.method, "budget": cell.budget,
                   "seed": cell.seed},
          "config": info.get("config", cell.config_string), "commit_started": info.get("commit", "unknown"),
          "commit_finished": info.get("commit_finished", "not recorded"), "seconds": cells_lib.wall_seconds(workdir),
          "summary": {k: summary[k] for k in SUMMARY_KEYS if k in summary},
          "test_correct": encode_bits(correct)}


def write(record: dict[str, Any], path: pathlib.Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
  os.replace(tmp, path)


def load_all(root: pathlib.Path = CELLS) -> dict[cells_lib.Cell, dict[str, Any]]:
  """Every record under ``root``: cell → the summary numbers, plus ``_seconds``, ``_commit`` and ``_correct``."""
  found = {}
  for path in sorted(root.glob("*/*.json")):
    r = json.loads(path.read_text())
    cell = cells_lib.Cell(**r["cell"])
    commit = r["commit_started"] if r["commit_started"] == r["commit_finished"] else (
        f"{r['commit_started']}→{r['commit_finished']}")
    n = r["summary"].get("test_size") or 0
    found[cell] = {**r["summary"], "_seconds": r["seconds"], "_commit": commit,
                   "_correct": decode_bits(r["test_correct"], n) if n else None}
  return found


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default="runs/grid", type=pathlib.Path)
  parser.add_argument("--out", default=CELLS, type=pathlib.Path)
  args = parser.parse_args()
  for cell in cells_lib.cells(list(cells_lib.MODELS)):
    workdir = cell.workdir(args.runs)
    if not (workdir / "summary.json").exists():
      continue
    cfg = cells_lib.cell_config(cell, args.runs, cells_lib.recorded_extra(workdir))
    write(make(cell, cfg, workdir), path_of(cell, args.out))
    print(path_of(cell, args.out))


if __name__ == "__main__":
  main()
