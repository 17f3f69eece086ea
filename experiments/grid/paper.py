"""The papers' headline rows next to our budget-grid cells, with every difference named.

Each paper row is matched to at most one budget of ours per method: the budget nearest the paper's
size, when it is within a factor 2 of it; when several rows of one method are nearest to the same
budget, the nearest row gets it (the others say which row took it), so each of our cells appears
under one paper row only. Cells where a seed missed the budget's tolerance carry †.
"""

from __future__ import annotations

import statistics
from typing import Any, NamedTuple

from experiments.grid import cells as cells_lib


class PaperRow(NamedTuple):
  paper: str
  data: str
  model: str
  setting: str  # the paper's row label / hyper-parameter that identifies it
  accuracy: str  # base → pruned, as the paper reports it
  nonzero: str  # the paper's "params": non-zero weights (MobilePrune), remaining parameters (DEGL)
  shrunk: str
  macs: str  # MACs or, for the HAR rows, the phone delay (labelled)
  ours: tuple[str, str, tuple[str, ...], float] | None  # (dataset, model, methods, budget) or None
  config: str
  unmatched: str = ""  # why ``ours`` is None, when the reason is not the data or the size


ROWS = [
    PaperRow("MobilePrune", "MNIST", "LeNet-300-100", "Table 2", "98.24 → 98.23", "1.97 % (5.25K / 267K)", "–",
             "MACs 25.79K (9.7 %)", ("mnist_subset", "lenet300", ("mobileprune_palm", "mobileprune"), 0.02),
             "paper_mobileprune_lenet300_mnist"),
    PaperRow("MobilePrune", "MNIST", "LeNet-5", "Table 2", "99.12 → 99.11", "0.54 % (2.31K / 431K)",
             "arch 5-14-151-57", "MACs 113.5K / 2,293K (4.95 %)",
             ("mnist_subset", "lenet5", ("mobileprune_palm", "mobileprune"), 0.005), "paper_mobileprune_lenet5_mnist"),
    PaperRow("MobilePrune ablation", "MNIST", "LeNet-300-100", "group lasso", "98.24 → 98.17",
             "12.01 % (32.06K / 267K)", "–", "MACs 39.70K", None, "–"),
    PaperRow("MobilePrune ablation", "MNIST", "LeNet-300-100", "ℓ1-SGL", "98.24 → 98.00", "5.93 % (15.80K / 267K)",
             "–", "MACs 25.88K", ("mnist_subset", "lenet300", ("l1_sgl",), 0.05), "–"),
    PaperRow("MobilePrune ablation", "MNIST", "LeNet-300-100", "ℓ0", "98.24 → 98.46", "21.55 % (57.45K / 267K)", "–",
             "MACs 143.20K", None, "–"),
    PaperRow("MobilePrune ablation", "MNIST", "LeNet-5", "group lasso", "99.12 → 99.11", "2.04 % (8.81K / 431K)", "–",
             "MACs 187.0K (8.2 %)", ("mnist_subset", "lenet5", ("group_lasso",), 0.02), "–"),
    PaperRow("MobilePrune ablation", "MNIST", "LeNet-5", "ℓ1-SGL", "99.12 → 99.03", "2.32 % (9.98K / 431K)", "–",
             "MACs 183.8K (8.0 %)", ("mnist_subset", "lenet5", ("l1_sgl",), 0.02), "–"),
    PaperRow("MobilePrune ablation", "MNIST", "LeNet-5", "ℓ0", "99.12 → 99.20", "74.5 % (321K / 431K)", "–",
             "MACs 2,293K", None, "–"),
    PaperRow("DEGL", "MNIST", "LeNet-5", "DEGL1 (t_th 1e-5)", "99.20 → 99.30", "5.9 % params", "5.9 %",
             "FLOPs −96.1 %", None, "paper_degl_lenet5_mnist:DEGL1", "our 5 % is nearer DEGL2 (4.7 %)"),
    PaperRow("DEGL", "MNIST", "LeNet-5", "DEGL2 (t_th 1e-4)", "99.20 → 99.23", "4.7 % params", "4.7 %",
             "FLOPs −96.9 %", ("mnist_subset", "lenet5", ("degl",), 0.05), "paper_degl_lenet5_mnist:DEGL2"),
    PaperRow("DEGL", "MNIST", "LeNet-5", "DEGL3 (t_th 1e-3)", "99.20 → 99.35", "3.1 % params", "3.1 %",
             "FLOPs −97.9 %", None, "paper_degl_lenet5_mnist:DEGL3", "our 2 % is nearer DEGL5 (1.6 %)"),
    PaperRow("DEGL", "MNIST", "LeNet-5", "DEGL4 (t_th 1e-2)", "99.20 → 99.27", "2.5 % params", "2.5 %",
             "FLOPs −98.3 %", None, "paper_degl_lenet5_mnist:DEGL4", "our 2 % is nearer DEGL5 (1.6 %)"),
    PaperRow("DEGL", "MNIST", "LeNet-5", "DEGL5 (t_th 2.5e-2)", "99.20 → 99.19", "1.6 % params", "1.6 %",
             "FLOPs −98.5 %", ("mnist_subset", "lenet5", ("degl",), 0.02), "paper_degl_lenet5_mnist:DEGL5"),
    PaperRow("DEGL", "MNIST", "LeNet-5", "EGL (DEGL1's t_th)", "99.20 → 99.15", "5.9 % params", "5.9 %",
             "FLOPs −96.1 %", ("mnist_subset", "lenet5", ("egl",), 0.05), "paper_degl_lenet5_mnist:EGL1"),
    PaperRow("DEGL", "MNIST", "LeNet-5", "EGL (DEGL5's t_th)", "99.20 → 99.06", "1.6 % params", "1.6 %",
             "FLOPs −98.5 %", ("mnist_subset", "lenet5", ("egl",), 0.02), "paper_degl_lenet5_mnist:EGL5"),
    PaperRow("MobilePrune", "WISDM", "1-D CNN", "HAR table (notebooks: Adam + magnitude)", "94.97 → 94.65",
             "9.52 %", "28.03 %", "delay, desktop 0.50 → 0.17 s; phone 1.34 → 0.51 s (Huawei P20), 0.48 → 0.23 s "
             "(OnePlus 8 Pro)", None, "paper_mobileprune_wisdm_har:paper_code"),
    PaperRow("MobilePrune", "UCI-HAR", "1-D CNN", "HAR table (notebooks: Adam + magnitude)", "90.06 → 89.96",
             "23.00 %", "46.83 %", "delay, desktop 1.01 → 0.43 s; phone 1.42 → 0.85 s (Huawei P20), 0.54 → 0.42 s "
             "(OnePlus 8 Pro)", None, "paper_mobileprune_uci_har_har:paper_code"),
    PaperRow("MobilePrune", "PAMAP2", "1-D CNN", "HAR table (notebooks: Adam + magnitude)", "96.89 → 96.95",
             "1.26 %", "3.72 %", "delay, desktop 0.51 → 0.05 s; phone 2.70 → 0.32 s (Huawei P20), 0.94 → 0.21 s "
             "(OnePlus 8 Pro)", None, "paper_mobileprune_pamap2_har:paper_code"),
    PaperRow("MobilePrune", "CIFAR-10", "VGG-like", "Table 2", "92.96 → 92.94", "4.0 % (0.60M / 15M)", "–",
             "MACs 77.83M / 313.5M", None, "paper_mobileprune_vgglike_cifar10"),
    PaperRow("MobilePrune", "CIFAR-10", "ResNet-32 (wide)", "Table 2", "95.29 → 95.47", "39.49 %", "–", "MACs 371.30M",
             None, "paper_mobileprune_resnet32_cifar10"),
    PaperRow("MobilePrune", "Tiny-ImageNet", "VGG-19", "Table 2", "61.56 → 56.27", "20.1 % (4.05M / 20.12M)", "–",
             "MACs 407.37M / 1,592.53M", None, "paper_mobileprune_vgg19_tinyimagenet"),
    PaperRow("DEGL", "CIFAR-10", "VGG-16", "DEGL1..3", "93.25 → 93.55 / 93.55 / 93.43", "13.3 / 12.0 / 10.0 % params",
             "same", "FLOPs −85.6 / −87.0 / −88.1 %", None, "paper_degl_vgg16_cifar10"),
    PaperRow("DEGL", "CIFAR-10", "ResNet-56", "DEGL1..3 (Table 3)", "93.04 → 93.41 / 93.35 / 92.95",
             "68.2 / 55.3 / 40.0 % params", "same", "FLOPs −38.2 / −47.8 / −53.4 %", None, "paper_degl_resnet56_cifar10"),
]

_MNIST = cells_lib.grid_config.PROFILES["mnist_subset"]
_START = cells_lib.grid_config.START["mobileprune"]
_PALM = cells_lib.grid_config.PALM_START
DIFFERENCES = [
    "**Counts.** The MobilePrune paper's \"params\" column counts non-zero weights; DEGL's counts the parameters "
    "left after removing whole units (its pruning leaves no scattered zeros). We report both for every cell: "
    "non-zero weights and the parameters of the physically shrunk model (`surgery.shrink`).",
    "**Data.** Ours: 8,000 of MNIST's 60,000 training digits (7,200 train + 800 validation per seed) and 2,000 test "
    "digits, not the full MNIST; the HAR data sets, CIFAR-10 and Tiny-ImageNet cannot be downloaded here, so those "
    "rows are not run (their configs are named; the BasicMotions and Fashion-MNIST results, which match no paper "
    "row, are in `budget_grid.md`).",
    "**Schedule.** Dense: Adam 1e-3 with cosine decay, {lenet5} (LeNet-5) / {lenet300} (LeNet-300) epochs, random "
    "shifts of ≤ {shift} pixels; pruning: {iterations} × ({prune} prox-SGD or PALM epochs + {retrain} masked Adam "
    "retraining epochs) from the dense model (`budget_grid.py`'s `PROFILES`). DEGL trains LeNet-5 for 100 epochs on "
    "full MNIST; the MobilePrune authors' released code trains its LeNets for ≈ 3,000–4,100 epochs.".format(
        **_MNIST, **_MNIST["dense"]),
    "**Coefficients.** The papers fix λ per row; our budget controller scales the penalty (one multiplier on all of "
    "a method's terms, their ratios fixed by `experiments/configs/budget_grid.py`) until the non-zero fraction is the "
    "budget ±10 %. Paper rows are matched to the budget nearest their size (within a factor 2). The ratios of the "
    "terms differ from the paper's: ours (prox-SGD) neuron/ℓ0 = {n:.0f}, channel/ℓ0 = {c:.0f}; PALM neuron/ℓ0 = "
    "{pn:.0f}, channel/ℓ0 = {pc:.0f}; the MobilePrune paper's settings put them at 0.5–1 and 5.".format(
        n=_START["neuron"] / _START["l0"], c=_START["channel"] / _START["l0"], pn=_PALM["neuron"] / _PALM["l0"],
        pc=_PALM["channel"] / _PALM["l0"]),
    "**Which model.** The papers report their best model; we report the last model of each run (no selection, "
    "on the test split or any other).",
    "**Tuning split.** Schedules were chosen on each seed's validation split; the test digits give the reported "
    "numbers only. The papers do not describe a validation split for these rows.",
    "**DEGL.** Starts from the dense model (the paper trains from scratch) with the same number of epochs as the "
    "other methods; exact prox selection and a constant rate (the paper: (sub)gradient SGD, lr ×0.1 after a "
    "5-epoch plateau — available as `degl.selection=subgradient`, `degl.plateau_patience=5`); the budget, not t_th, "
    "sets the size (t_th = 1e-2 throughout); the classifier is outside the selection penalty and inside the "
    "debiasing ridge (λ_rt = λ).",
    "**MobilePrune.** Both PALM (the paper's solver) and prox-SGD.",
    "**The classifier.** MobilePrune, group lasso, ℓ1-SGL, ℓ0 and ℓ1 penalise the classifier like every other layer "
    "(its rows are neuron groups; its bias entries are groups of one); DEGL and EGL leave it out of the selection "
    "penalty. One budget is therefore spent on different weights by the two families.",
    "**MACs.** Compacted convention (non-zero weights × output positions), as MobilePrune; DEGL's LeNet \"FLOPs\" "
    "reference (4.6M) is 2 × MACs, so its percentages compare with ours, its absolute numbers do not.",
]
ANCHOR = ("Anchor, not regenerated by this repo: issue 15's audit ran the authors' own MobilePrune code on the same "
          "8,000 / 2,000 split of these digits and measured 97.15 % test accuracy at 7.6 % non-zero after 10 minutes "
          "on 2 CPU cores.")


def _cell_stats(results, dataset: str, model: str, method: str, budget: float) -> dict[str, Any] | None:
  cells = {c.seed: s for c, s in results.items() if (c.dataset, c.model, c.method, c.budget) == (dataset, model, method, budget)}
  ss = list(cells.values())
  dense = [s for c, s in results.items() if (c.dataset, c.model, c.method) == (dataset, model, "dense") and c.seed in cells]
  if not ss:
    return None  # the dense accuracy above is the mean over the same seeds as the cell's

  def ms(values):
    return (f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1
            else f"{values[0]:.2f}")

  missed = any(not (s.get("budget") or {}).get("within_tolerance", True) for s in ss)
  return {"n": len(ss), "base": ms([100 * s["pruned_accuracy"] for s in dense]) if dense else "–",
          "pruned": ms([100 * s["pruned_accuracy"] for s in ss]) + (" †" if missed else ""),
          "nonzero": ms([100 * s["nonzero_params"] / s["params_total"] for s in ss]),
          "shrunk": ms([100 * s["params_remaining"] / s["params_total"] for s in ss]),
          "macs": ms([100 * s["macs_pruned"] / s["macs_dense"] for s in ss]),
          "commits": sorted({s.get("_commit", "unknown") for s in ss})}


def _accuracies(text: str) -> tuple[float, float] | None:
  """(base, pruned) from a paper's "99.12 → 99.11" (None for "–" or several values)."""
  parts = text.split(" → ")
  try:
    return float(parts[0]), float(parts[1])
  except (ValueError, IndexError):
    return None


def _mean(results, dataset: str, model: str, method: str, budget: float | None, key: str = "pruned_accuracy"):
  values = [100 * s[key] for c, s in results.items() if (c.dataset, c.model, c.method, c.budget) == (dataset, model,
                                                                                                     method, budget)]
  return (statistics.mean(values), len(values)) if values else (None, 0)


def reviewer_summary(results) -> list[str]:
  """≤ 15 lines: what is reproduced, what is not, and why — numbers from ``results``."""
  from experiments.grid.report import METHOD_NAMES, group, paired_cells

  gaps, drops, paper_drops = [], [], []
  for row in ROWS:
    acc = _accuracies(row.accuracy)
    if row.ours is None or acc is None:
      continue
    dataset, model, methods, budget = row.ours
    for method in methods:
      pruned, n = _mean(results, dataset, model, method, budget)
      base, _ = _mean(results, dataset, model, "dense", None)
      if pruned is None or base is None:
        continue
      gaps.append(acc[1] - pruned)
      drops.append((base - pruned, METHOD_NAMES[method], model, budget))
      paper_drops.append(acc[0] - acc[1])
  palm = [s for c, s in results.items() if c.method == "mobileprune_palm"]
  landed = sum(bool((s.get("budget") or {}).get("within_tolerance")) for s in palm)
  verdicts = []
  for dataset, model, budget in sorted({(c.dataset, c.model, c.budget) for c in results if c.method == "mobileprune_palm"}):
    pair = paired_cells(group(results, dataset, model), "mobileprune_palm", "mobileprune", budget)
    if pair is not None:
      verdicts.append("prox-SGD" if pair.lead and pair.mean < 0 else "PALM" if pair.lead
                      else "one seed" if pair.n == 1 and pair.p < 0.05 else "noise")
  dense5, _ = _mean(results, "mnist_subset", "lenet5", "dense", None)
  dense300, _ = _mean(results, "mnist_subset", "lenet300", "dense", None)
  lines = ["## Reviewer's summary", ""]
  lines.append("* **Run here:** the MNIST LeNet rows of both papers, on an 8,000 / 2,000-digit subset of MNIST, every "
               "method pruned to the same non-zero budgets (0.5–5 %) by one controller, paired over seeds and test "
               "digits. **Not run:** the HAR, CIFAR-10 and Tiny-ImageNet rows (no data offline; their configs are "
               "named below).")
  if dense5 is not None and dense300 is not None:
    lines.append(f"* **Dense models are weaker than the papers':** LeNet-5 {dense5:.2f} % vs 99.12–99.20 %, "
                 f"LeNet-300-100 {dense300:.2f} % vs 98.24 % (7,200 training digits and 20–30 epochs, not 60,000 "
                 "digits and hundreds to thousands of epochs).")
  if drops:
    worst, best = max(drops), min(drops)
    lines.append(f"* **Near-lossless pruning is not reproduced at these sizes:** at the matched rows the papers' pruned "
                 f"models are {-max(paper_drops):+.2f} to {-min(paper_drops):+.2f} pt from their dense ones; "
                 f"we lose {best[0]:.2f} pt ({best[1]}, {best[2]} @ {100 * best[3]:g} %) to {worst[0]:.2f} pt "
                 f"({worst[1]}, {worst[2]} @ {100 * worst[3]:g} %), and sit {min(gaps):.2f}–{max(gaps):.2f} pt below the "
                 "papers' pruned accuracies. Our pruning schedule is 2 × 10 epochs; the authors' code trains for "
                 "thousands.")
  if palm:
    lines.append(f"* **MobilePrune's own solver (PALM) lands on its budget** in {landed} of {len(palm)} cells (±10 %). "
                 f"Paired against prox-SGD at the same budget: prox-SGD leads at {verdicts.count('prox-SGD')}, PALM at "
                 f"{verdicts.count('PALM')}; one seed only, no lead claimed, at {verdicts.count('one seed')}; within "
                 f"noise at {verdicts.count('noise')} of {len(verdicts)} (data set, model, budget) pairs "
                 "(`palm_landings.md`).")
  lines.append("* **Sizes are comparable, not identical:** the MobilePrune paper counts non-zero weights, DEGL the "
               "parameters left after removing units; we report both, plus MACs, for every cell, and match each "
               "paper row to our nearest budget (within a factor 2).")
  lines.append("* **Claims:** a method \"leads\" in `budget_grid.md` only where the paired t interval over seeds and "
               "McNemar's test on the test digits agree; one seed never makes a lead. We report the last model of "
               "each run; the papers report their best.")
  return lines + [""]


def side_by_side(results) -> str:
  from experiments.grid.report import METHOD_NAMES

  lines = ["# The papers' headline rows next to ours\n", *reviewer_summary(results),
           "Paper columns as the papers report them (their \"params\" convention named per row); ours from the budget "
           "grid (`budget_grid.md`), mean ± std over n seeds, test accuracy of the shrunk model, each of our cells under "
           "one paper row only. Our cells: config `experiments/configs/budget_grid.py:MODEL,METHOD,DATASET,BUDGET "
           "--config.seed=S --config.init_from=<dense run>/model` (the budget is in the row); the commit is in the "
           "last column. Regenerate from the committed cell records: `python -m experiments.grid.report`.\n",
           "| paper | data | model | paper row | paper acc base → pruned | paper non-zero | paper shrunk params | "
           "paper MACs / delay | ours: data | ours: method @ budget | n | ours acc dense → pruned | ours non-zero % | "
           "ours shrunk params % | ours MACs % | commit | paper-row config |",
           "|" + "---|" * 17]
  for row in ROWS:
    prefix = (f"| {row.paper} | {row.data} | {row.model} | {row.setting} | {row.accuracy} | {row.nonzero} | "
              f"{row.shrunk} | {row.macs} |")
    ours = []
    if row.ours is not None:
      dataset, model, methods, budget = row.ours
      for method in methods:
        st = _cell_stats(results, dataset, model, method, budget)
        name = f"{METHOD_NAMES[method]} @ {100 * budget:g} %"
        if st is None:
          ours.append(f" {dataset} | {name} | 0 | not run yet | – | – | – | – | `{row.config}` |")
        else:
          ours.append(f" {dataset} | {name} | {st['n']} | {st['base']} → {st['pruned']} | {st['nonzero']} | "
                      f"{st['shrunk']} | {st['macs']} | {', '.join(st['commits'])} | `{row.config}` |")
    else:
      reason = (row.unmatched or "no budget of ours within a factor 2 (ours are 0.5–5 %)" if row.data == "MNIST"
                else f"not run here ({row.data} is not available offline)")
      ours.append(f" – | {reason} | – | – | – | – | – | – | `{row.config}` |")
    lines += [prefix + o for o in ours]
  lines += ["", ANCHOR, "", "Differences between the paper rows and ours:", ""]
  lines += [f"* {d}" for d in DIFFERENCES]
  return "\n".join(lines) + "\n"
