"""Runs the offline comparison grid and regenerates every table and plot in experiments/results/.

    python experiments/reproduce.py run --runs runs/reproduce           # all runs (skips finished ones, resumes cut ones)
    python experiments/reproduce.py run --runs runs/reproduce --datasets basic_motions --seeds 0
    python experiments/reproduce.py report --runs runs/reproduce        # tables + plots from the run directories

Run directories are ``RUNS/DATASET/MODEL_METHOD_sSEED`` (each a normal ``mobileprune_jax run``
workdir with summary.json). Seed 0 of each cell also exports both models to TFLite and times them
in LiteRT. ``report`` needs only the summary.json files.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
from collections import defaultdict
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
CONFIG = HERE / "configs" / "offline.py"
RESULTS = HERE / "results"

from mobileprune_jax.config import import_file  # noqa: E402

offline = import_file(CONFIG)

METHODS = offline.METHODS
MODELS = {"mnist_subset": ("lenet300", "lenet5"), "fashion_mnist_idx": ("lenet300", "lenet5"),
          "basic_motions": ("har_cnn",)}
SEEDS = {"mnist_subset": (0, 1, 2), "fashion_mnist_idx": (0,), "basic_motions": (0, 1, 2)}
# cells too slow for several seeds on 2 CPU cores (PALM's Gauss-Seidel sweep: ~10 min per LeNet-5 run)
SEEDS_OVERRIDE = {("mnist_subset", "lenet5", "mobileprune_palm"): (0,)}
DATA_NOTES = {
    "mnist_subset": "the embedded 8,000/2,000 MNIST subset (13 % of MNIST's training set), a short schedule",
    "fashion_mnist_idx": ("full Fashion-MNIST (60,000/10,000; Debian's dataset-fashion-mnist): a harder task than MNIST, "
                          "same image size; a short schedule"),
    "basic_motions": ("aeon's BasicMotions (40/40 windows of 100 × 6 smartwatch channels, 4 classes): a different, much "
                      "smaller sensor task than WISDM / UCI-HAR / PAMAP2 (test accuracy moves in steps of 2.5 points)"),
}
METHOD_NAMES = {"mobileprune": "MobilePrune (prox-SGD)", "mobileprune_palm": "MobilePrune (PALM)", "degl": "DEGL",
                "egl": "EGL", "group_lasso": "group lasso", "l1_sgl": "ℓ1-SGL", "l0": "ℓ0", "l1": "ℓ1"}


def workdir(runs: pathlib.Path, dataset: str, model: str, method: str, seed: int) -> pathlib.Path:
  return runs / dataset / f"{model}_{method}_s{seed}"


# -------------------------------------------------------------------------------- run ---


def run_grid(runs: pathlib.Path, datasets, models, methods, seeds, export: bool) -> None:
  for dataset in datasets:
    run_dataset(runs, dataset, models, methods, seeds, export)


def run_dataset(runs: pathlib.Path, dataset: str, models, methods, seeds, export: bool) -> None:
  """Every (model, method, seed) cell of one data set; a missing data set is skipped with a message."""
  from mobileprune_jax import config as config_lib
  from mobileprune_jax.data import DataUnavailableError
  from mobileprune_jax.train import pipeline

  for model in MODELS[dataset]:
    if models and model not in models:
      continue
    for method in methods:
      cell_seeds = SEEDS_OVERRIDE.get((dataset, model, method), SEEDS[dataset])
      for seed in (s for s in cell_seeds if seeds is None or s in seeds):
        wd = workdir(runs, dataset, model, method, seed)
        if (wd / "summary.json").exists():
          continue
        cfg = config_lib.load_config(f"{CONFIG}:{model},{method},{dataset}")
        config_lib.apply_overrides(cfg, [f"seed={seed}", "progress=False", f"export.tflite={export and seed == 0}"])
        print(f"== {wd}", flush=True)
        try:
          pipeline.run(cfg, wd, resume=(wd / "checkpoints").exists(), log=lambda m: print(m, flush=True))
        except DataUnavailableError as e:
          print(f"skipped {dataset}: {e}", flush=True)
          return
        except FloatingPointError as e:  # a diverged run: report it, keep going with the grid
          print(f"FAILED {wd}: {e}", flush=True)


# ----------------------------------------------------------------------------- report ---


def load_summaries(runs: pathlib.Path) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
  """(dataset, model, method) -> the summaries of its seeds, seed order."""
  cells = defaultdict(list)
  for path in sorted(runs.glob("*/*_s*/summary.json")):
    s = json.loads(path.read_text())
    method = "mobileprune_palm" if s["method"] == "mobileprune" and s["mode"] == "palm" else s["method"]
    cells[(s["dataset"], s["model"], method)].append(s)
  for v in cells.values():
    v.sort(key=lambda s: s["seed"])
  return dict(cells)


def mean_std(values: list[float], fmt: str = "{:.2f}") -> str:
  values = [v for v in values if v is not None]
  if not values:
    return "–"
  if len(values) == 1:
    return fmt.format(values[0])
  return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def cell_stats(ss: list[dict[str, Any]]) -> dict[str, Any]:
  """Per-seed numbers of one (dataset, model, method) cell, in percent where relative."""
  pct = lambda key, total: [100 * s[key] / s[total] for s in ss]
  return {
      "seeds": len(ss),
      "base": [100 * s["base_accuracy"] if s["base_accuracy"] is not None else None for s in ss],
      "pruned": [100 * s["pruned_accuracy"] for s in ss],
      "params": [s["params_remaining"] for s in ss],
      "params_pct": pct("params_remaining", "params_total"),
      "nonzero_pct": pct("nonzero_params", "params_total"),
      "macs": [s["macs_pruned"] for s in ss],
      "macs_pct": pct("macs_pruned", "macs_dense"),
  }


def dataset_table(dataset: str, cells) -> str:
  lines = [f"# {dataset}\n", f"Data: {DATA_NOTES.get(dataset, dataset)}. Config: `experiments/configs/offline.py:MODEL,METHOD,"
           f"{dataset}`.\n", "Accuracy in %, mean ± std over seeds (n); params = the physically shrunk model; non-zero = "
           "its non-zero weights; MACs in the papers' compacted convention (non-zero weights × output positions); "
           "architecture, LiteRT latency (batch 1, 1 thread, median) and .tflite size from seed 0. DEGL/EGL have no "
           "dense pretraining (base = –).\n",
           "| model | method | n | base acc | pruned acc | params | params % | non-zero % | MACs % | architecture (seed 0) "
           "| latency dense → pruned ms | .tflite dense → pruned KB |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for model in MODELS.get(dataset, sorted({m for d, m, _ in cells if d == dataset})):
    for method in METHODS:
      ss = cells.get((dataset, model, method))
      if not ss:
        continue
      st, s0 = cell_stats(ss), ss[0]
      latency = (f"{s0['latency_dense_ms']:.3f} → {s0['latency_pruned_ms']:.3f} ({s0['latency_pruned_ms'] / s0['latency_dense_ms']:.2f}×)"
                 if "latency_dense_ms" in s0 else "–")
      size = (f"{s0['tflite_bytes_dense'] / 1024:,.0f} → {s0['tflite_bytes_pruned'] / 1024:,.0f}"
              if "tflite_bytes_dense" in s0 else "–")
      lines.append(f"| {model} | {METHOD_NAMES[method]} | {st['seeds']} | {mean_std(st['base'])} | {mean_std(st['pruned'])} | "
                   f"{mean_std(st['params'], '{:,.0f}')} | {mean_std(st['params_pct'])} | {mean_std(st['nonzero_pct'])} | "
                   f"{mean_std(st['macs_pct'])} | {s0['architecture_dense']} → {s0['architecture']} | {latency} | {size} |")
  return "\n".join(lines) + "\n"


# headline rows of the papers (spec §I): (paper, data, model, base, pruned, params remaining, MACs,
# our cells = (model, method, ...) or None)
PAPER_ROWS = [
    ("MobilePrune", "MNIST", "LeNet-300-100", 98.24, 98.23, "5.25K / 267K (1.97 %)", "25.79K", ("lenet300", "mobileprune_palm", "mobileprune")),
    ("MobilePrune", "MNIST", "LeNet-5", 99.12, 99.11, "2.31K / 431K (0.54 %)", "113.50K / 2293K", ("lenet5", "mobileprune_palm", "mobileprune")),
    ("MobilePrune ablation", "MNIST", "LeNet-5 ℓ0", None, None, "321K / 431K", "–", ("lenet5", "l0")),
    ("MobilePrune ablation", "MNIST", "LeNet-5 group lasso", None, None, "8.81K / 431K", "187.0K", ("lenet5", "group_lasso")),
    ("MobilePrune ablation", "MNIST", "LeNet-5 ℓ1-SGL", None, None, "9.98K / 431K", "183.8K", ("lenet5", "l1_sgl")),
    ("DEGL", "MNIST", "LeNet-5", 99.20, 99.30, "5.9 % (DEGL1) … 1.6 % (DEGL5)", "−96.1 % … −98.5 %", ("lenet5", "degl")),
    ("MobilePrune", "CIFAR-10", "VGG-like", 92.96, 92.94, "0.60M / 15M (4.0 %)", "77.83M / 313.5M", None),
    ("MobilePrune", "CIFAR-10", "ResNet-32 (wide)", 95.29, 95.47, "2.93M / 7.42M (39.49 %)", "371.30M", None),
    ("MobilePrune", "Tiny-ImageNet", "VGG-19", 61.56, 56.27, "4.05M / 20.12M", "407.37M / 1592.53M", None),
    ("DEGL", "CIFAR-10", "VGG-16", 93.25, 93.55, "13.3 / 12.0 / 10.0 %", "−85.6 / −87.0 / −88.1 %", None),
    ("MobilePrune", "WISDM", "1D-CNN", 94.97, 94.65, "params 28.03 %, nnz 9.52 %", "delay 0.50→0.17 s", ("har_cnn", "mobileprune_palm", "mobileprune")),
    ("MobilePrune", "UCI-HAR", "1D-CNN", 90.06, 89.96, "params 46.83 %, nnz 23.00 %", "delay 1.01→0.43 s", ("har_cnn", "mobileprune_palm", "mobileprune")),
    ("MobilePrune", "PAMAP2", "1D-CNN", 96.89, 96.95, "params 3.72 %, nnz 1.26 %", "delay 0.51→0.05 s", ("har_cnn", "mobileprune_palm", "mobileprune")),
]
OUR_DATA = {"MNIST": ("mnist_subset", "fashion_mnist_idx"), "WISDM": ("basic_motions",), "UCI-HAR": ("basic_motions",),
            "PAMAP2": ("basic_motions",)}
PAPER_CONFIG = {"LeNet-300-100": "paper_mobileprune_lenet300_mnist", "LeNet-5": "paper_mobileprune_lenet5_mnist",
                "VGG-like": "paper_mobileprune_vgglike_cifar10", "ResNet-32 (wide)": "paper_mobileprune_resnet32_cifar10",
                "VGG-19": "paper_mobileprune_vgg19_tinyimagenet", "VGG-16": "paper_degl_vgg16_cifar10",
                "1D-CNN": "paper_mobileprune_{data}_har"}


def side_by_side(cells) -> str:
  lines = ["# The papers' headline rows (spec §I) next to ours\n",
           "Ours = mean over seeds of the offline grid (`experiments/reproduce.py`). **Every one of our rows uses different "
           "data or a much shorter schedule than the paper's** (marked ⚠ with the difference): the papers' data sets "
           "(full MNIST, CIFAR-10, Tiny-ImageNet, WISDM, UCI-HAR, PAMAP2) cannot be downloaded on the machine that made "
           "these tables. The configs that run the papers' own rows with their hyper-parameters are named in the last "
           "column; run them where the data is (`python -m mobileprune_jax run --config experiments/configs/NAME.py`).\n",
           "| paper | data | model | paper base → pruned acc | paper params | paper MACs | ours: data ⚠ | ours: method | "
           "ours base → pruned acc | ours params (%) | ours MACs % | paper-row config |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for paper, data, model, base, pruned, params, macs, ours in PAPER_ROWS:
    acc = f"{base:.2f} → {pruned:.2f}" if base is not None else "–"
    key = model.split(" ")[0] if model.startswith("LeNet") else model
    config = PAPER_CONFIG.get(key, "–")
    if paper == "DEGL" and key == "LeNet-5":
      config = "paper_degl_lenet5_mnist"
    if "{data}" in config:
      config = config.format(data=data.lower().replace("-", "_"))
    if "ablation" in paper:
      config = "–"
    prefix = f"| {paper} | {data} | {model} | {acc} | {params} | {macs} |"
    rows = []
    if ours is not None:
      model_ours, *methods = ours
      for dataset, method in ((d, m) for d in OUR_DATA.get(data, ()) for m in methods):
        ss = cells.get((dataset, model_ours, method))
        if not ss:
          continue
        st = cell_stats(ss)
        base_ours = mean_std(st["base"]) if any(v is not None for v in st["base"]) else "–"
        rows.append(f" ⚠ {dataset} | {METHOD_NAMES[method]} | {base_ours} → {mean_std(st['pruned'])} | "
                    f"{statistics.mean(st['params']):,.0f} ({mean_std(st['params_pct'])}) | {mean_std(st['macs_pct'])} | "
                    f"`{config}` |")
    if not rows:
      reason = "no run of this cell in the run directories" if data in OUR_DATA and ours else f"not run here (no {data} offline)"
      rows = [f" {reason} | – | – | – | – | `{config}` |"]
    lines += [prefix + r for r in rows]
  used = sorted({d for d, _, _ in cells})
  lines += ["", "How our data differs (⚠):", ""]
  lines += [f"* ⚠ {d}: {DATA_NOTES.get(d, d)}; the paper rows use the full data set named in the row and schedules of "
            "tens to hundreds of epochs." for d in used]
  return "\n".join(lines) + "\n"


def plot_accuracy_vs_params(dataset: str, cells, path: pathlib.Path) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  models = [m for m in MODELS.get(dataset, ()) if any(k[:2] == (dataset, m) for k in cells)]
  fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4.8), squeeze=False)
  for ax, model in zip(axes[0], models):
    for i, method in enumerate(METHODS):
      ss = cells.get((dataset, model, method))
      if not ss:
        continue
      st = cell_stats(ss)
      color, marker = f"C{i}", "osD^v<>p"[i % 8]
      ax.scatter(st["params_pct"], st["pruned"], color=color, marker=marker, alpha=0.35, s=18)
      ax.errorbar(statistics.mean(st["params_pct"]), statistics.mean(st["pruned"]),
                  yerr=statistics.stdev(st["pruned"]) if len(ss) > 1 else None, color=color, marker=marker,
                  markersize=8, capsize=3, label=METHOD_NAMES[method])
    base = [b for (d, m, _), ss in cells.items() if (d, m) == (dataset, model) for b in cell_stats(ss)["base"] if b is not None]
    if base:
      ax.axhline(statistics.mean(base), color="grey", linestyle="--", linewidth=1, label="dense (mean)")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("parameters of the shrunk model (% of dense, log)")
    ax.set_ylabel("test accuracy after pruning (%)")
    ax.set_title(f"{model} on {dataset}")
    ax.grid(True, which="both", alpha=0.3)
  handles = {}
  for ax in axes[0]:
    for h, label in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(label, h)
  fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=5, fontsize=8)
  fig.tight_layout(rect=(0, 0.12, 1, 1))
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_widths(dataset: str, model: str, cells, path: pathlib.Path) -> None:
  """Per-layer output widths, dense vs each method (seed 0), like DEGL's Fig. 4."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  methods = [m for m in METHODS if (dataset, model, m) in cells]
  if not methods:
    return
  before = cells[(dataset, model, methods[0])][0]["widths_before"]
  layers = list(before)
  fig, ax = plt.subplots(figsize=(min(12.0, max(8.0, 0.2 * len(layers) * (len(methods) + 1))), 4.5))
  width = 0.8 / (len(methods) + 1)
  xs = range(len(layers))
  ax.bar([x - 0.4 + width / 2 for x in xs], [before[k] for k in layers], width, color="lightgrey", label="dense")
  for j, method in enumerate(methods, start=1):
    after = cells[(dataset, model, method)][0]["widths_after"]
    ax.bar([x - 0.4 + width * (j + 0.5) for x in xs], [after.get(k, 0) for k in layers], width, color=f"C{METHODS.index(method)}",
           label=METHOD_NAMES[method])
  ax.set_xticks(list(xs), [k.replace("/kernel", "") for k in layers], rotation=30, ha="right", fontsize=8)
  ax.set_yscale("log")
  ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.set_ylabel("output channels / units kept (log)")
  ax.set_title(f"{model} on {dataset}: output widths per layer, dense vs pruned (seed 0)", fontsize=10)
  ax.set_ylim(top=8 * max(before.values()))  # room for the legend above the bars
  ax.legend(fontsize=7, ncol=5, loc="upper center")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def report(runs: pathlib.Path, out: pathlib.Path) -> list[pathlib.Path]:
  cells = load_summaries(runs)
  if not cells:
    raise SystemExit(f"no summary.json under {runs}/DATASET/RUN/: run `reproduce.py run --runs {runs}` first")
  out.mkdir(parents=True, exist_ok=True)
  (out / "plots").mkdir(exist_ok=True)
  written = []
  for dataset in sorted({d for d, _, _ in cells}):
    path = out / f"{dataset}.md"
    path.write_text(dataset_table(dataset, cells))
    written.append(path)
    plot = out / "plots" / f"{dataset}_accuracy_vs_params.png"
    plot_accuracy_vs_params(dataset, cells, plot)
    written.append(plot)
    for model in MODELS.get(dataset, ()):
      plot = out / "plots" / f"{dataset}_{model}_widths.png"
      plot_widths(dataset, model, cells, plot)
      if plot.exists():
        written.append(plot)
  path = out / "paper_vs_ours.md"
  path.write_text(side_by_side(cells))
  written.append(path)
  return written


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)
  r = sub.add_parser("run", help="run the grid (skips finished runs, resumes interrupted ones)")
  r.add_argument("--runs", default="runs/reproduce", type=pathlib.Path)
  r.add_argument("--datasets", nargs="+", default=list(MODELS), choices=list(MODELS))
  r.add_argument("--models", nargs="+", default=None)
  r.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
  r.add_argument("--seeds", nargs="+", type=int, default=None)
  r.add_argument("--no-export", action="store_true", help="skip the TFLite export / LiteRT timing of seed 0")
  p = sub.add_parser("report", help="tables and plots from the run directories")
  p.add_argument("--runs", default="runs/reproduce", type=pathlib.Path)
  p.add_argument("--out", default=RESULTS, type=pathlib.Path)
  args = parser.parse_args()
  if args.command == "run":
    run_grid(args.runs, args.datasets, args.models, args.methods, args.seeds, export=not args.no_export)
  else:
    for path in report(args.runs, args.out):
      print(path)


if __name__ == "__main__":
  main()
