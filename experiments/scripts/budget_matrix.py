"""Budget targets vs reached sizes: short MobilePrune runs (and one per method) on the embedded MNIST subset.

Writes a markdown table with the commit and the exact overrides of every cell:

    python experiments/scripts/budget_matrix.py --workdir runs/budgets > experiments/results/budgets.md

The schedule is the tests' short one (pretrain 1 epoch, prune 3, retrain 1); accuracies are the
test digits' after that schedule and are not tuned — the table is about landing on a size.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

from mobileprune_jax import config as config_lib
from mobileprune_jax.train import pipeline

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from report_run import _commit  # noqa: E402

CONFIG = "experiments/configs/quick.py"
SHORT = ["pretrain.epochs=1", "prune.iterations=1", "prune.epochs=3", "retrain.epochs=1", "progress=False",
         "data_parallel=False"]
TARGETS = [("nonzero", 0.01), ("nonzero", 0.02), ("nonzero", 0.05), ("params", 0.05), ("params", 0.10)]
METHODS = [("mobileprune", ["mode=palm"]), ("group_lasso", []), ("l1_sgl", []),
           ("degl", ["degl.select_epochs=3", "degl.retrain_epochs=1", "degl.gamma=0.05"]),
           ("egl", ["degl.select_epochs=3", "degl.retrain_epochs=1", "degl.gamma=0.05"])]


def _cells() -> list[tuple[str, str, str, float, list[str]]]:
  cells = [(model, "mobileprune", kind, target, [f"model={model}", f"budget.{kind}={target}"])
           for model in ("lenet300", "lenet5") for kind, target in TARGETS]
  cells += [("lenet300", method if not extra or extra[0] != "mode=palm" else "mobileprune (PALM)", "nonzero", 0.05,
             ["model=lenet300", f"method={method}", "budget.nonzero=0.05", *extra]) for method, extra in METHODS]
  return cells


def _reached(s: dict, kind: str) -> float:
  return {"nonzero": s["nonzero_params"] / s["params_total"], "params": s["params_remaining"] / s["params_total"],
          "macs": s["macs_pruned"] / s["macs_dense"]}[kind]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--conditions", default="2 CPU cores, quiet",
                      help="what the machine was doing, printed next to the times")
  args = parser.parse_args()
  rows = []
  for i, (model, method, kind, target, overrides) in enumerate(_cells()):
    cfg = config_lib.load_config(CONFIG)
    config_lib.apply_overrides(cfg, SHORT + overrides)
    workdir = pathlib.Path(args.workdir) / f"cell{i}"
    start = time.time()
    try:
      s = pipeline.run(cfg, workdir, log=lambda *_: None)
    except pipeline.BudgetNotReachedError:
      s = json.loads((workdir / "summary.json").read_text())
    reached = _reached(s, kind)
    rows.append(f"| {model} | {method} | {kind} | {100 * target:.1f} % | {100 * reached:.2f} % | "
                f"{reached / target - 1:+.1%} | {s['budget']['multiplier']:.3g} | {100 * s['base_accuracy']:.2f} → "
                f"{100 * s['pruned_accuracy']:.2f} % | {time.time() - start:.0f} s | `{' '.join(overrides)}` |")
    print(rows[-1], file=sys.stderr, flush=True)
  print(f"# Budget targets vs reached sizes\n\nMade by `python experiments/scripts/budget_matrix.py` at commit "
        f"{_commit()}, config `{CONFIG}` with `{' '.join(SHORT)}` and the overrides per row ({args.conditions}). "
        "Fractions of the dense model as `summary.json` reports them: non-zero parameters and parameters of the "
        "shrunk model over the dense model's parameters. Tolerance ±10 % relative. Accuracies: the 2,000 test digits "
        "after the short schedule (dense after 1 pretraining epoch → pruned), not tuned. Times: wall clock, all cells in one "
        "process (later cells reuse compiled steps).\n")
  print("| model | method | budget | target | reached | off by | final multiplier | accuracy | time | overrides |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  print("\n".join(rows))


if __name__ == "__main__":
  main()
