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


class RecordError(ValueError):
  """A cell record that is not one this module wrote (damaged, edited or misplaced); the message is one line."""


COUNTS = ("test_size", "params_total", "params_remaining", "nonzero_params", "macs_dense", "macs_pruned")


def _is_number(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and np.isfinite(x)


def check(r: Any, path: pathlib.Path, root: pathlib.Path) -> None:
  """Raises ``RecordError`` unless ``r`` (a parsed record read from ``path`` under ``root``) is well formed: the
  fields the tables read, with sane values; stored under its own cell's name; its per-example correctness the size of
  its test split and agreeing with its test accuracy (as ``make`` checks a new record against its run)."""
  def bad(why: str) -> RecordError:
    return RecordError(f"{path}: {why}")

  if not isinstance(r, dict) or not {"cell", "commit_started", "commit_finished", "seconds", "summary",
                                     "test_correct"} <= set(r):
    raise bad("not a cell record (needs cell, commit_started, commit_finished, seconds, summary, test_correct)")
  c = r["cell"]
  if not isinstance(c, dict) or set(c) != {"dataset", "model", "method", "budget", "seed"}:
    raise bad("'cell' must name dataset, model, method, budget and seed")
  if c["method"] not in (*cells_lib.METHODS, "dense") or not isinstance(c["seed"], int) or (
      c["budget"] is not None and not (_is_number(c["budget"]) and 0 < c["budget"] <= 1)):
    raise bad(f"unknown cell {c}")
  if not all(isinstance(r[k], str) for k in ("commit_started", "commit_finished")) or not _is_number(r["seconds"]):
    raise bad("commits must be strings and seconds a number")
  cell = cells_lib.Cell(**c)
  if path_of(cell, root) != path:
    raise bad(f"holds the record of {path_of(cell, root).relative_to(root)}")
  s = r["summary"]
  if not isinstance(s, dict) or not all(isinstance(s.get(k), int) and not isinstance(s.get(k), bool) and s[k] >= 0
                                        for k in COUNTS):
    raise bad(f"summary needs non-negative integer {', '.join(COUNTS)}")
  for k in ("base_accuracy", "pruned_accuracy", "base_val_accuracy", "val_accuracy"):
    if k in s and s[k] is not None and not (_is_number(s[k]) and 0 <= s[k] <= 1):
      raise bad(f"summary {k} must be a fraction in [0, 1], got {s[k]!r}")
  if not _is_number(s.get("pruned_accuracy")):
    raise bad("summary has no pruned_accuracy")
  n, bits = s["test_size"], r["test_correct"]
  if not isinstance(bits, str) or len(bits) != 2 * (-(-n // 8)) or any(ch not in "0123456789abcdef" for ch in bits):
    raise bad(f"test_correct must be {2 * (-(-n // 8))} lowercase hex digits (one bit per test example)")
  correct = int(decode_bits(bits, n).sum()) if n else 0
  if n and abs(correct - s["pruned_accuracy"] * n) > 2:
    raise bad(f"test_correct gives {correct} of {n} right, the summary's accuracy {s['pruned_accuracy']:.4f}")


def load_all(root: pathlib.Path = CELLS) -> dict[cells_lib.Cell, dict[str, Any]]:
  """Every record under ``root``: cell → the summary numbers, plus ``_seconds``, ``_commit`` and ``_correct``.

  Raises:
    RecordError: a record that does not parse or does not pass ``check`` (one line naming the file).
  """
  found = {}
  for path in sorted(root.glob("*/*.json")):
    try:
      r = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise RecordError(f"{path}: not JSON ({e})") from None
    check(r, path, root)
    cell = cells_lib.Cell(**r["cell"])
    commit = r["commit_started"] if r["commit_started"] == r["commit_finished"] else (
        f"{r['commit_started']}→{r['commit_finished']}")
    n = r["summary"]["test_size"]
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
