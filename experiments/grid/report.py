"""Tables and curves of the budget grid, from the committed cell records (``experiments/results/cells``).

    python -m experiments.grid.report                  # writes experiments/results/budget_grid.md,
                                                       # plots/budget_*.png and paper_vs_ours.md from the records,
                                                       # and docs/experiments.md's excerpt
    python -m experiments.grid.report --landings       # only palm_landings.md: every PALM cell's target vs reached
    python -m experiments.grid.report --runs runs/grid # from run directories instead (before records existed)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys
from collections import defaultdict
from typing import Any

from experiments.grid import cells as cells_lib
from experiments.grid import paper, record, stats

RESULTS = cells_lib.HERE / "results"
METHOD_NAMES = {"mobileprune": "MobilePrune (prox-SGD)", "mobileprune_palm": "MobilePrune (PALM)", "degl": "DEGL",
                "egl": "EGL", "group_lasso": "group lasso", "l1_sgl": "ℓ1-SGL", "l0": "ℓ0", "l1": "ℓ1"}
DATA_NOTES = {
    "mnist_subset": "the embedded MNIST subset: 8,000 training digits (7,200 train + 800 validation per seed) and "
                    "2,000 test digits",
    "fashion_mnist_idx": "full Fashion-MNIST (54,000 train + 6,000 validation, 10,000 test; Debian's "
                         "dataset-fashion-mnist)",
    "basic_motions": "aeon's BasicMotions (40 training windows of 100 × 6 smartwatch channels: 32 train + 8 "
                     "validation; 40 test windows, so test accuracy moves in steps of 2.5 points)",
}

CLASSES = {"mnist_subset": 10, "fashion_mnist_idx": 10, "basic_motions": 4}
DATA_DIR = {"fashion_mnist_idx": " --config.data_dir=<the four Fashion-MNIST IDX files>"}
NOT_RUN = {("fashion_mnist_idx", "mobilenet_v2"): "a train step takes ≈ 2.8 s at batch 128 on 2 CPU cores, so one "
           "Fashion-MNIST epoch ≈ 20 min and the model's 33 cells (10 dense + 10 pruning epochs each) ≈ 110 h; "
           "run them on an accelerator with `--models mobilenet_v2`"}


def load(runs: pathlib.Path) -> dict[cells_lib.Cell, dict[str, Any]]:
  """Every finished cell under ``runs``: its summary, wall time and provenance (``cell.json``)."""
  found = {}
  for cell in cells_lib.cells(list(cells_lib.MODELS)):
    wd = cell.workdir(runs)
    s = cells_lib.summary(wd)
    if s is None:
      continue
    info = json.loads((wd / "cell.json").read_text()) if (wd / "cell.json").exists() else {}
    found[cell] = {**s, "_seconds": cells_lib.wall_seconds(wd), "_commit": info.get("commit", "unknown")}
  return found


def pct(s: dict[str, Any], kind: str) -> float:
  return 100 * {"nonzero": s["nonzero_params"] / s["params_total"], "params": s["params_remaining"] / s["params_total"],
                "macs": s["macs_pruned"] / s["macs_dense"], "test": s["pruned_accuracy"],
                "val": s["val_accuracy"] or 0.0}[kind]


def mean_std(values: list[float], fmt: str = "{:.2f}") -> str:
  if not values:
    return "–"
  if len(values) == 1:
    return fmt.format(values[0]) + " (n=1)"
  return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))} (n={len(values)})"


def group(results, dataset: str, model: str) -> dict[tuple[str, float | None], list[dict[str, Any]]]:
  """(method, budget) -> the summaries of its seeds."""
  out = defaultdict(list)
  for cell, s in sorted(results.items(), key=lambda kv: kv[0].seed):
    if (cell.dataset, cell.model) == (dataset, model):
      out[(cell.method, cell.budget)].append(s)
  return out


STRUCTURED = ("mobileprune", "mobileprune_palm", "degl", "egl", "group_lasso", "l1_sgl")  # group penalties


def best_methods(cells_of, budgets, among=None) -> dict[float, tuple[set[str], float]]:
  """Per budget: the methods (of ``among``, default all) with the highest mean test accuracy (ties all count)
  among cells that met the budget in every seed."""
  best = {}
  for b in budgets:
    scored = {m: statistics.mean(pct(s, "test") for s in ss) for (m, bb), ss in cells_of.items()
              if bb == b and (among is None or m in among)
              and all(s.get("budget", {}).get("within_tolerance", False) for s in ss)}
    if scored:
      top = max(scored.values())
      best[b] = ({m for m, acc in scored.items() if acc >= top - 1e-9}, top)
  return best


def paired_cells(cells_of, a: str, b: str, budget: float) -> stats.Paired | None:
  """A vs B at ``budget`` on the seeds where both cells met the budget and carry per-example correctness."""
  def usable(method):
    return {s.get("seed", i): s["_correct"] for i, s in enumerate(cells_of.get((method, budget), []))
            if s.get("_correct") is not None and (s.get("budget") or {}).get("within_tolerance")}
  sa, sb = usable(a), usable(b)
  seeds = sorted(set(sa) & set(sb))
  return stats.paired([sa[k] for k in seeds], [sb[k] for k in seeds]) if seeds else None


def ranked(cells_of, budget: float, among=None) -> list[tuple[str, float]]:
  """(method, mean test accuracy) of the cells at ``budget`` that met it in every seed, best first; the means are
  over the seeds every such method has (a partly run grid compares like with like)."""
  candidates = {m: {s.get("seed", i): s for i, s in enumerate(ss)} for (m, bb), ss in cells_of.items()
                if bb == budget and m != "dense" and (among is None or m in among)
                and all((s.get("budget") or {}).get("within_tolerance", False) for s in ss)}
  if not candidates:
    return []
  seeds = set.intersection(*(set(by_seed) for by_seed in candidates.values()))
  if not seeds:
    return []
  scored = {m: statistics.mean(pct(by_seed[k], "test") for k in seeds) for m, by_seed in candidates.items()}
  return sorted(scored.items(), key=lambda kv: -kv[1])


def best_vs_next(cells_of, budgets, among=None) -> list[str]:
  """Per budget: the best mean against the next best, paired (a lead only where ``stats`` says so)."""
  lines = []
  for b in budgets:
    order = ranked(cells_of, b, among)
    if len(order) < 2:
      continue
    (first, _), (second, _) = order[:2]
    pair = paired_cells(cells_of, first, second, b)
    verdict = (pair.describe(METHOD_NAMES[first], METHOD_NAMES[second]) if pair
               else "no seed with both cells recorded: not compared")
    lines.append(f"* {100 * b:g} %: {METHOD_NAMES[first]} − {METHOD_NAMES[second]}: {verdict}")
  return lines


def mobileprune_margins(cells_of, budgets) -> list[str]:
  """MobilePrune (each solver) against the best other method within the budget at 1 %, paired."""
  lines = []
  for b in [b for b in budgets if b == 0.01]:
    others = ranked(cells_of, b, [m for m in cells_lib.METHODS if not m.startswith("mobileprune")])
    if not others:
      continue
    other = others[0][0]
    for method, kind in (("mobileprune", "prox-SGD"), ("mobileprune_palm", "PALM")):
      pair = paired_cells(cells_of, method, other, b) if (method, b) in cells_of else None
      if pair:
        lines.append(f"MobilePrune ({kind}) vs the best other method within the budget at {100 * b:g} % non-zero "
                     f"({METHOD_NAMES[other]}): {pair.describe(f'MobilePrune ({kind})', METHOD_NAMES[other])}.\n")
  return lines


def collapsed_cells(cells_of, classes: int) -> list[tuple[str, float, int, int]]:
  """(method, budget, seeds at chance, seeds) for the cells whose test accuracy is within 1 point of chance."""
  out = []
  for b in cells_lib.BUDGETS:
    for method in cells_lib.METHODS:
      ss = cells_of.get((method, b), [])
      n = sum(pct(s, "test") <= 100 / classes + 1 for s in ss)
      if n:
        out.append((method, b, n, len(ss)))
  return out


def model_section(results, dataset: str, model: str) -> list[str]:
  cells_of = group(results, dataset, model)
  dense = cells_of.get(("dense", None), [])
  budgets = [b for b in cells_lib.BUDGETS if any(bb == b for _, bb in cells_of)]
  if not dense or not budgets:
    why = NOT_RUN.get((dataset, model))
    return [f"## {model} on {dataset}\n", f"Not run here: {why}.\n"] if why else []
  commits = sorted({s["_commit"] for ss in cells_of.values() for s in ss})
  lines = [f"## {model} on {dataset}\n",
           f"Dense baseline (test / validation accuracy %): {mean_std([pct(s, 'test') for s in dense])} / "
           f"{mean_std([pct(s, 'val') for s in dense])}; {sum(s['_seconds'] or 0 for s in dense) / len(dense) / 60:.1f} "
           f"min per dense run. Cells made at commit(s) {', '.join(commits)}; config "
           f"`experiments/configs/budget_grid.py:{model},METHOD,{dataset},BUDGET --config.seed=S "
           f"--config.init_from=<dense run of seed S>/model{DATA_DIR.get(dataset, '')}`.\n"]
  best = best_methods(cells_of, budgets)
  paired_note = ("paired on the same seeds and test examples (`experiments/grid/stats.py`: 95 % t interval of the "
                 "accuracy difference over seeds and McNemar's exact test on the test examples; a lead only where both "
                 "agree, \"within noise\" otherwise)")
  lines += [f"The two best mean test accuracies per budget (cells within the budget in every seed; means over the "
            f"seeds all such cells share), {paired_note}:\n", *best_vs_next(cells_of, budgets), ""]
  structured = best_vs_next(cells_of, budgets, STRUCTURED)
  if structured:
    lines += ["The same among the group penalties only (ℓ0 and ℓ1 act on single weights):\n", *structured, ""]
  lines += mobileprune_margins(cells_of, budgets)
  collapsed = collapsed_cells(cells_of, CLASSES[dataset])
  if collapsed:
    lines.append(f"At chance accuracy (≤ {100 / CLASSES[dataset] + 1:g} %: the network stopped carrying a signal): "
                 + "; ".join(f"{METHOD_NAMES[m]} at {100 * b:g} % ({n} of {k} seeds)" for m, b, n, k in collapsed)
                 + ".\n")
  header = "| method | " + " | ".join(f"{100 * b:g} % non-zero" for b in budgets) + " |"
  rule = "|---|" + "---|" * len(budgets)
  for title, kind, fmt in (("Test accuracy (%)", "test", "{:.2f}"), ("Validation accuracy (%)", "val", "{:.2f}"),
                           ("Parameters of the shrunk model (% of dense)", "params", "{:.2f}"),
                           ("MACs of the shrunk model (% of dense, compacted convention)", "macs", "{:.2f}"),
                           ("Non-zero weights reached (% of dense; target ±10 %)", "nonzero", "{:.2f}")):
    lines += [f"**{title}**" + (" — bold: the best mean per budget among cells within the budget in every seed (a "
                                "lead only where the paired comparison above says so); "
                                "† a seed missed the budget's tolerance" if kind == "test" else "") + "\n",
              header, rule]
    for method in cells_lib.METHODS:
      row = []
      for b in budgets:
        ss = cells_of.get((method, b), [])
        text = mean_std([pct(s, kind) for s in ss], fmt)
        if kind == "test" and ss and method in best.get(b, (set(),))[0]:
          text = f"**{text}**"
        if kind == "test" and any(not s.get("budget", {}).get("within_tolerance", False) for s in ss):
          text += " †"
        row.append(text)
      if any(t != "–" for t in row):
        lines.append(f"| {METHOD_NAMES[method]} | " + " | ".join(row) + " |")
    lines.append("")
  lines += ["**Minutes per cell** (wall clock, mean over seeds, on a shared 2-core CPU machine)\n", header, rule]
  for method in cells_lib.METHODS:
    row = [mean_std([s["_seconds"] / 60 for s in cells_of.get((method, b), []) if s["_seconds"]], "{:.1f}")
           for b in budgets]
    if any(t != "–" for t in row):
      lines.append(f"| {METHOD_NAMES[method]} | " + " | ".join(row) + " |")
  return lines + [""]


def tables(results) -> str:
  lines = ["# Budget-matched comparison\n",
           "Every method pruned to the same fraction of non-zero weights by the budget controller (`budget.nonzero`), "
           "starting from the same dense model per seed; the penalty's strength is set by the controller, the schedule "
           "is the same for every method (`experiments/configs/budget_grid.py` lists it and every deviation from the "
           "papers). Accuracy of the physically shrunk model; mean ± sample std over seeds (n). Made from the committed "
           "cell records (`experiments/results/cells/DATASET/CELL.json`: config, commits, summary, per-example test "
           "correctness) by `python -m experiments.grid.report`; the records come from `python -m experiments.grid.run "
           "--runs runs/grid` (resumable; `--hours H` for a chunk).\n"]
  for dataset, models in cells_lib.MODELS.items():
    sections = [line for model in models for line in model_section(results, dataset, model)]
    if not any(c.dataset == dataset for c in results):
      sections = [f"No committed cell records for {dataset} yet (its earlier runs predate the records and were not "
                  f"kept): `python -m experiments.grid.run --runs runs/grid --datasets {dataset}` makes them.\n"]
    if sections:
      lines += [f"# {dataset}\n", f"Data: {DATA_NOTES[dataset]}.\n", *sections]
  return "\n".join(lines) + "\n"


def plot(results, dataset: str, path: pathlib.Path) -> bool:
  """Accuracy vs budget (left) and vs shrunk parameters (right) per model of ``dataset``."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  models = [m for m in cells_lib.MODELS[dataset]
            if group(results, dataset, m).get(("dense", None)) and len(group(results, dataset, m)) > 1]
  if not models:
    return False
  fig, axes = plt.subplots(len(models), 2, figsize=(11, 4.2 * len(models)), squeeze=False)
  for row, model in zip(axes, models):
    cells_of = group(results, dataset, model)
    for i, method in enumerate(cells_lib.METHODS):
      points = [(b, ss) for (m, b), ss in sorted(cells_of.items(), key=lambda kv: kv[0][1] or 0) if m == method]
      if not points:
        continue
      style = dict(color=f"C{i}", marker="osD^v<>p"[i], label=METHOD_NAMES[method], capsize=3)
      accs = [[pct(s, "test") for s in ss] for _, ss in points]
      row[0].errorbar([100 * b for b, _ in points], [statistics.mean(a) for a in accs],
                      yerr=[statistics.stdev(a) if len(a) > 1 else 0 for a in accs], **style)
      row[1].errorbar([statistics.mean(pct(s, "params") for s in ss) for _, ss in points],
                      [statistics.mean(a) for a in accs], **style)
    dense = statistics.mean(pct(s, "test") for s in cells_of[("dense", None)])
    for ax, xlabel in zip(row, ("non-zero weights (% of dense, the budget)", "parameters of the shrunk model (% of dense)")):
      ax.axhline(dense, color="grey", linestyle="--", linewidth=1, label="dense")
      ax.axhline(dense - 0.5, color="grey", linestyle=":", linewidth=1, label="dense − 0.5 pt")
      ax.set_xscale("log")
      ax.set_xlabel(xlabel + ", log")
      ax.set_ylabel("test accuracy (%)")
      ax.set_title(f"{model} on {dataset}")
      ax.grid(True, which="both", alpha=0.3)
  handles = {}
  for ax in axes.flat:
    for h, label in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(label, h)
  fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=5, fontsize=8)
  fig.tight_layout(rect=(0, 0.08, 1, 1))
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


def report(runs: pathlib.Path, out: pathlib.Path) -> list[pathlib.Path]:
  """The tables from the run directories under ``runs``."""
  return write_tables(load(runs), out, runs)


def write_tables(results, out: pathlib.Path, source: pathlib.Path) -> list[pathlib.Path]:
  if not results:
    raise SystemExit(f"no finished cell in {source}: run `python -m experiments.grid.run --runs runs/grid` first")
  (out / "plots").mkdir(parents=True, exist_ok=True)
  written = [out / "budget_grid.md", out / "paper_vs_ours.md"]
  written[0].write_text(tables(results))
  written[1].write_text(paper.side_by_side(results))
  for dataset in cells_lib.MODELS:
    path = out / "plots" / f"budget_{dataset}.png"
    if plot(results, dataset, path):
      written.append(path)
  return written


def palm_landings(results) -> str:
  """Every PALM cell: budget target vs the size reached, and whether it is within the tolerance."""
  lines = ["# PALM on a budget: target vs reached", "",
           "Every MobilePrune (PALM) cell of the committed records (`experiments/results/cells`), regenerated by "
           "`python -m experiments.grid.report --landings`. *reached*: the budgeted fraction of the shrunk model "
           "(non-zero weights / dense parameters); the tolerance is ±10 % of the target.", "",
           "| data | model | target | seed | reached | within ±10 % | test accuracy (dense → pruned) | commit |",
           "|---|---|---:|---:|---:|---|---|---|"]
  palm = sorted((c for c in results if c.method == "mobileprune_palm"),
                key=lambda c: (c.dataset, c.model, c.budget, c.seed))
  for c in palm:
    s, b = results[c], results[c].get("budget") or {}
    reached = ", ".join(f"{100 * v:.3f} %" for v in b.get("reached", {}).values()) or "–"
    lines.append(f"| {c.dataset} | {c.model} | {100 * c.budget:g} % | {c.seed} | {reached} | "
                 f"{'yes' if b.get('within_tolerance') else 'no'} | {100 * s.get('base_accuracy', float('nan')):.2f} → "
                 f"{100 * s['pruned_accuracy']:.2f} | {s['_commit']} |")
  within = sum(bool((results[c].get("budget") or {}).get("within_tolerance")) for c in palm)
  lines += ["", f"{within} of {len(palm)} cells within the tolerance.", "",
            "## PALM vs prox-SGD at the same budget, paired", "",
            "Same seeds (same dense model, same test examples) on both sides, both within their budget; "
            "`experiments/grid/stats.py`: mean accuracy difference PALM − prox-SGD with a 95 % t interval over seeds, "
            "McNemar's exact test on the test examples only one of the two gets right (pooled over seeds).", "",
            "| data | model | budget | PALM − prox-SGD |", "|---|---|---:|---|"]
  for key in sorted({(c.dataset, c.model, c.budget) for c in palm}):
    pairs = []
    for c in palm:
      if (c.dataset, c.model, c.budget) != key:
        continue
      other = dataclasses.replace(c, method="mobileprune")
      both = [results.get(c), results.get(other)]
      if all(r is not None and r.get("_correct") is not None and (r.get("budget") or {}).get("within_tolerance")
             for r in both):
        pairs.append((both[0]["_correct"], both[1]["_correct"]))
    text = (stats.paired([a for a, _ in pairs], [b for _, b in pairs]).describe("PALM", "prox-SGD") if pairs
            else "no seed with both cells recorded within the budget")
    lines.append(f"| {key[0]} | {key[1]} | {100 * key[2]:g} % | {text} |")
  return "\n".join(lines) + "\n"


EXCERPT_START, EXCERPT_END = "<!-- grid_excerpt -->", "<!-- /grid_excerpt -->"
DOCS = cells_lib.HERE.parent / "docs" / "experiments.md"
EXCERPT_MODELS = (("mnist_subset", "lenet5", "LeNet-5"), ("mnist_subset", "lenet300", "LeNet-300-100"))


def excerpt(results) -> str:
  """docs/experiments.md's excerpt: the MNIST test-accuracy tables and the paired comparisons, from ``results``."""
  out = ["Written by `python -m experiments.grid.report` from the committed cell records (never typed): test "
         "accuracy %, mean ± std over n seeds, bold the best mean within the budget (not a lead by itself), † a seed "
         "outside the budget's ±10 %; the comparisons are paired (same seeds and test digits).", ""]
  for dataset, model, label in EXCERPT_MODELS:
    section = model_section(results, dataset, model)
    if not section or section[1].startswith("Not run"):
      continue
    dense = mean_std([pct(s, "test") for s in group(results, dataset, model)[("dense", None)]])
    start = section.index(next(line for line in section if line.startswith("**Test accuracy (%)**")))
    table = section[start + 1:section.index("", start + 1)]
    paired = [line for line in section if line.startswith(("* ", "MobilePrune (", "The two best", "The same among"))]
    out += [f"{label} (dense {dense}):", "", *table, "", *[line.rstrip("\n") for line in paired], ""]
  return "\n".join(out).rstrip("\n")


def write_excerpt(path: pathlib.Path, results) -> bool:
  """Replaces the text between the excerpt markers of ``path`` (False when it has none)."""
  text = path.read_text() if path.exists() else ""
  if EXCERPT_START not in text:
    return False
  head, rest = text.split(EXCERPT_START, 1)
  _, tail = rest.split(EXCERPT_END, 1)
  path.write_text(f"{head}{EXCERPT_START}\n{excerpt(results)}\n{EXCERPT_END}{tail}")
  return True


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cells", default=record.CELLS, type=pathlib.Path, help="the committed cell records")
  parser.add_argument("--runs", default=None, type=pathlib.Path, help="read run directories instead of records")
  parser.add_argument("--landings", action="store_true", help="only write palm_landings.md")
  parser.add_argument("--out", default=RESULTS, type=pathlib.Path)
  parser.add_argument("--excerpt", nargs=2, metavar=("DATASET", "MODEL"),
                      help="print one model's test-accuracy table (the README's excerpt) instead of writing files")
  args = parser.parse_args()
  try:
    results = load(args.runs) if args.runs else record.load_all(args.cells)
  except record.RecordError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  if args.excerpt:
    section = model_section(results, *args.excerpt)
    end = section.index("**Validation accuracy (%)**\n")
    print("\n".join(section[1:end]))
    return
  if args.landings:
    path = args.out / "palm_landings.md"
    path.write_text(palm_landings(results))
    print(path)
    return
  for path in write_tables(results, args.out, args.runs or args.cells):
    print(path)
  if args.runs is None and args.out == RESULTS and write_excerpt(DOCS, results):  # the records' own report only
    print(DOCS)


if __name__ == "__main__":
  main()
