"""Runs the budget grid in resumable chunks: finished cells are skipped, cut ones resumed.

    python -m experiments.grid.run --runs runs/grid --hours 2          # stop starting cells after 2 h
    python -m experiments.grid.run --runs runs/grid --datasets mnist_subset --methods l1_sgl --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time
from collections.abc import Callable, Sequence

from experiments.grid import cells as cells_lib
from experiments.grid import record


def run_cell(cell: cells_lib.Cell, runs: pathlib.Path, extra: Sequence[str] = (),
             log: Callable[[str], None] = lambda message: None, records: pathlib.Path = record.CELLS,
             code: str | None = None) -> str:
  """Runs (or resumes) one cell; returns 'done', 'missed budget', 'diverged', 'busy' or 'no data'.

  ``extra``: config overrides ``KEY=VALUE`` added to every cell (recorded in its ``cell.json``);
  ``log``: receives the pipeline's lines (resume point, one per epoch, the summary); ``records``: where the
  finished cell's record goes (``experiments.grid.record``); ``code``: the commit of the code this process
  imported (``commit()`` when it started; HEAD may have moved since), recorded as the cell's.
  """
  import jax

  from mobileprune_jax.data import DataUnavailableError
  from mobileprune_jax.train import pipeline

  wd = cell.workdir(runs)
  code = code or commit()
  cfg = cells_lib.cell_config(cell, runs, extra)
  wd.mkdir(parents=True, exist_ok=True)
  if not (wd / "cell.json").exists():  # what made the cell: kept through resumes
    config = " ".join([cell.config_string, *(f"--config.{o}" for o in extra)])
    _write_json(wd / "cell.json", {"config": config, "init_from": cfg.init_from and "dense cell", "commit": code})
  try:
    pipeline.run(cfg, wd, resume=(wd / "checkpoints").exists(), log=log)
    status = "done"
  except pipeline.BudgetNotReachedError:
    status = "missed budget"
  except FloatingPointError as e:
    (wd / "FAILED").write_text(str(e) + "\n")
    return "diverged"
  except pipeline.WorkdirBusyError:  # another runner has this cell: leave it to that one
    return "busy"
  except DataUnavailableError as e:
    print(f"skipped {cell.dataset}: {e}", flush=True)
    return "no data"
  finally:
    jax.clear_caches()  # one process runs hundreds of cells: keep the compiled executables bounded
  info = json.loads((wd / "cell.json").read_text())
  _write_json(wd / "cell.json", {**info, "commit_finished": code})  # a resumed cell: the code it finished on
  record.write(record.make(cell, cfg, wd), record.path_of(cell, records))
  return status


def _write_json(path: pathlib.Path, value) -> None:
  tmp = path.with_name(path.name + ".tmp")  # atomic: a runner killed here leaves no half-written file behind
  tmp.write_text(json.dumps(value) + "\n")
  os.replace(tmp, path)


def commit() -> str:
  """HEAD of the repository, with "+changes" when the library or the configs differ from it."""
  import subprocess

  root = cells_lib.HERE.parent
  git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.strip()
  head = git("rev-parse", "--short", "HEAD") or "unknown"
  return head + ("+changes" if git("status", "--porcelain", "mobileprune_jax", "experiments/configs") else "")


def _prefixed(name: str) -> Callable[[str], None]:
  """Prints each line of a pipeline message under the cell's name."""
  return lambda message: print("\n".join(f"  {name}: {line}" for line in message.splitlines()), flush=True)


def _persistent_compilation_cache(directory: pathlib.Path) -> None:
  """Cells recompile the same steps (new optimizer objects); XLA's on-disk cache makes that a lookup."""
  import jax

  jax.config.update("jax_compilation_cache_dir", str(directory))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--runs", default="runs/grid", type=pathlib.Path)
  parser.add_argument("--datasets", nargs="+", default=list(cells_lib.MODELS), choices=list(cells_lib.MODELS))
  parser.add_argument("--models", nargs="+", default=None)
  parser.add_argument("--methods", nargs="+", default=None, choices=cells_lib.METHODS)
  parser.add_argument("--budgets", nargs="+", type=float, default=None)
  parser.add_argument("--seeds", nargs="+", type=int, default=None)
  parser.add_argument("--hours", type=float, default=None, help="start no new cell after this many hours")
  parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides for every cell")
  parser.add_argument("--records", default=record.CELLS, type=pathlib.Path, help="where cell records go")
  parser.add_argument("--quiet", action="store_true", help="one line per finished cell, no per-epoch lines")
  args = parser.parse_args()
  _persistent_compilation_cache(args.runs / ".jax_cache")
  start, skipped_data, code = time.time(), set(), commit()  # the code this process runs
  todo = cells_lib.cells(args.datasets, args.models, args.methods, args.budgets, args.seeds)
  for i, cell in enumerate(todo):
    wd = cell.workdir(args.runs)
    if cell.dataset in skipped_data or (wd / "summary.json").exists() or (wd / "FAILED").exists():
      continue
    if args.hours is not None and time.time() - start > 3600 * args.hours:
      print(f"stopping after {args.hours} h; {len(todo) - i} cells left (run the same command to continue)")
      return
    if cell.budget is not None and not (cell.dense().workdir(args.runs) / "summary.json").exists():
      continue  # its dense run was not made (no data, or diverged)
    t0, name = time.time(), f"{cell.config_arg} seed {cell.seed}"
    if not args.quiet:
      print(f"cell {i + 1}/{len(todo)}: {name}", flush=True)
    status = run_cell(cell, args.runs, args.set, log=(lambda m: None) if args.quiet else _prefixed(name),
                      records=args.records, code=code)
    if status == "no data":
      skipped_data.add(cell.dataset)
    print(json.dumps({"cell": cell.config_arg, "seed": cell.seed, "status": status,
                      "seconds": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
  main()
