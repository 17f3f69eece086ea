"""Per-layer vs coupled groups at the same parameter budget: runs the pairs and writes the comparison table.

For each case the same config runs twice through the CLI, ``--config.coef.coupled=False`` (the papers'
per-layer groups) and ``=True`` (``Regulariser.for_model``: the units surgery removes), with TFLite export
for the LiteRT latency. The table gives test accuracy, non-zero and rebuilt parameters, MACs, zero kernel
entries left in the rebuilt model, residual-stream widths before → after and the latency dense → shrunk.
Runs resume (``--resume``) if a workdir exists.

    python experiments/scripts/coupled_vs_per_layer.py --root runs/coupled [--cases lenet5,lenet5_macs,resnet20,mobilenet_v2] \\
        > experiments/results/coupled_vs_per_layer.md
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
from collections import defaultdict

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

CASES = {
    "lenet5": ("LeNet-5, embedded MNIST subset (the README job)", "experiments/configs/lenet5_mobileprune.py", [],
               (28, 28, 1)),
    "lenet5_macs": ("LeNet-5, the README job at a MACs budget (10 % of the dense MACs instead of 5 % of the parameters)",
                    "experiments/configs/lenet5_mobileprune.py", ["--config.budget.params=None", "--config.budget.macs=0.1"],
                    (28, 28, 1)),
    "resnet20": ("ResNet-20 (projection shortcuts), Fashion-MNIST 32×32, quick schedule",
                 "experiments/configs/resnet20_fashion_mnist.py:quick", [], (32, 32, 1)),
    "resnet20_20pct": ("ResNet-20 at 20 % of the parameters: 5,000 training images, 2 pruning epochs at lr 0.05",
                       "experiments/configs/resnet20_fashion_mnist.py:quick",
                       ["--config.train_subset=5000", "--config.prune.epochs=2", "--config.prune.lr=0.05",
                        "--config.budget.params=0.2"], (32, 32, 1)),
    "resnet20_macs": ("ResNet-20 (projection shortcuts), quick schedule at a MACs budget (50 % of the dense MACs "
                      "instead of 50 % of the parameters)", "experiments/configs/resnet20_fashion_mnist.py:quick",
                      ["--config.budget.params=None", "--config.budget.macs=0.5"], (32, 32, 1)),
    "resnet20_macs75": ("ResNet-20 (projection shortcuts), quick schedule at 75 % of the dense MACs",
                        "experiments/configs/resnet20_fashion_mnist.py:quick",
                        ["--config.budget.params=None", "--config.budget.macs=0.75"], (32, 32, 1)),
    "mobilenet_v2": ("MobileNetV2 ×0.35, Fashion-MNIST 32×32, quick schedule",
                     "experiments/configs/mobilenet_v2_fashion_mnist.py:quick", ["--config.budget.params=0.25"],
                     (32, 32, 1)),
    "mobilenet_v2_3ep": ("MobileNetV2 ×0.35, quick schedule with three pruning epochs (the pruning, not the landing, "
                         "comes near the target)", "experiments/configs/mobilenet_v2_fashion_mnist.py:quick",
                         ["--config.budget.params=0.25", "--config.prune.epochs=3"], (32, 32, 1)),
    "mobilenet_v2_macs": ("MobileNetV2 ×0.35, quick schedule with three pruning epochs at a MACs budget (35 % of the "
                          "dense MACs)", "experiments/configs/mobilenet_v2_fashion_mnist.py:quick",
                          ["--config.budget.params=None", "--config.budget.macs=0.35", "--config.prune.epochs=3"],
                          (32, 32, 1)),
}


def _commit() -> str:
  sys.path.insert(0, str(pathlib.Path(__file__).parent))
  from report_run import _commit as commit

  return commit()


def run(config: str, workdir: pathlib.Path, coupled: bool, extra: list[str]) -> None:
  if (workdir / "summary.json").exists():
    return
  cmd = [sys.executable, "-m", "mobileprune_jax", "run", "--config", config, "--workdir", str(workdir),
         f"--config.coef.coupled={coupled}", "--config.export.tflite=True", "--config.progress=False", *extra]
  if (workdir / "checkpoints").exists():
    cmd.append("--resume")
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "made_at.txt").write_text(_commit() + "\n")  # the commit the run (last) ran on
  print("running:", " ".join(cmd), file=sys.stderr, flush=True)
  subprocess.run(cmd, check=True, stdout=sys.stderr)


def streams(workdir: pathlib.Path, input_shape) -> dict[str, tuple[int, int]]:
  """Residual-stream widths (dense → shrunk): channel sets several layers write (adds), named by their first writer."""
  from mobileprune_jax import surgery

  model = surgery.build_original(workdir / "model")
  summary = json.loads((workdir / "summary.json").read_text())
  layers = {w["path"]: w for w in summary["shrink"]["layers"]}
  x = jnp.zeros((1, *input_shape))
  graph = surgery.trace(model, x)
  writers = defaultdict(set)
  for layer in graph.layers:
    if layer.groups == 1:
      for node in layer.out_nodes.tolist():
        writers[graph.find(node)].add(layer.kernel_path)
  names = sorted({tuple(sorted(w)) for w in writers.values() if len(w) > 1})
  return {w[0]: (layers[w[0]]["out_before"], layers[w[0]]["out_after"]) for w in names}


def zero_entries(workdir: pathlib.Path) -> int:
  from mobileprune_jax import surgery
  from mobileprune_jax.groups import leaf_paths

  params = nnx.state(surgery.load(workdir / "model"), nnx.Param)
  return sum(int(np.sum(np.asarray(v) == 0)) for p, v in zip(leaf_paths(params), jax.tree.leaves(params))
             if p.endswith("kernel"))


def before_landing(workdir: pathlib.Path) -> str:
  """The budgeted size the pruning reached before the landing trimmed the rest ("–" when the run did not land)."""
  entries = [json.loads(line) for line in (workdir / "log.jsonl").read_text().splitlines() if line.strip()]
  landing = next((i for i, e in enumerate(entries) if e.get("event") == "budget_landing"), None)
  if landing is None:
    return "–"
  sized = [e for e in entries[:landing] if "budget_reached" in e]
  return ", ".join(f"{100 * v:.1f} %" for v in sized[-1]["budget_reached"].values()) if sized else "–"


def row(label: str, workdir: pathlib.Path) -> list[str]:
  s = json.loads((workdir / "summary.json").read_text())
  made = (workdir / "made_at.txt").read_text().strip() if (workdir / "made_at.txt").exists() else "?"
  pct = lambda a, b: f"{100 * a / b:.2f} %"
  lat = (f"{s['latency_dense_ms']:.3f} → {s['latency_pruned_ms']:.3f} ms" if "latency_dense_ms" in s else "–")
  return [f"{label} ({made})", f"{100 * s['base_accuracy']:.2f} → {100 * s['pruned_accuracy']:.2f}",
          pct(s["nonzero_params"], s["params_total"]), f"{s['params_remaining']:,} ({pct(s['params_remaining'], s['params_total'])})",
          pct(s["macs_pruned"], s["macs_dense"]), f"{zero_entries(workdir):,}", before_landing(workdir), lat]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--root", type=pathlib.Path, default=pathlib.Path("runs/coupled"))
  parser.add_argument("--cases", default="lenet5,lenet5_macs,resnet20,mobilenet_v2")
  parser.add_argument("--report-only", action="store_true", help="only write the table from finished runs")
  parser.add_argument("--keep", type=pathlib.Path, default=None,
                      help="an earlier table: its sections of the cases not given are carried over as they are")
  args = parser.parse_args()
  kept = _sections(args.keep.read_text()) if args.keep is not None and args.keep.exists() else {}
  cases = args.cases.split(",")
  carried = [c for c in CASES if c not in cases and CASES[c][0] in kept]
  out = ["# Per-layer vs coupled groups at the same parameter budget", "",
         f"Made by `python experiments/scripts/coupled_vs_per_layer.py --root {args.root} --cases {args.cases}"
         f"{' --keep ' + str(args.keep) if args.keep else ''}` at commit {_commit()}"
         + (f" (the sections of {', '.join(carried)} carried over from the earlier table)" if carried else "")
         + "; each row names the commit its run was made at. One seed per cell; the budget is the section's (the "
         "config's `budget.params` unless the section overrides it); latencies are LiteRT medians at batch 1, 1 thread, on a shared 2-core machine (±40 % between "
         "runs).", ""]
  for case in CASES:
    if case not in cases:
      if case in carried:
        out += [kept[CASES[case][0]].rstrip("\n"), ""]
      continue
    title, config, extra, input_shape = CASES[case]
    dirs = {c: args.root / f"{case}_{'coupled' if c else 'per_layer'}" for c in (False, True)}
    if not args.report_only:
      for coupled, workdir in dirs.items():
        run(config, workdir, coupled, extra)
    done = {c: d for c, d in dirs.items() if (d / "summary.json").exists()}
    out += [f"## {title}", "", f"`{config}` {' '.join(extra)}".rstrip(), ""]
    if not done:
      out += ["not run", ""]
      continue
    out += ["| groups | test accuracy (dense → pruned, %) | non-zero | rebuilt params | MACs | zero kernel entries "
            "left | budget before the landing | LiteRT latency (dense → shrunk) |", "|---|---|---|---|---|---|---|---|"]
    out += ["| " + " | ".join(row("coupled" if c else "per-layer", d)) + " |" for c, d in done.items()]
    out += ["", "Layer widths (`architecture`, dense → shrunk):", ""]
    for c, d in done.items():
      s = json.loads((d / "summary.json").read_text())
      out.append(f"* {'coupled' if c else 'per-layer'}: {s['architecture_dense']} → {s['architecture']}")
    widths = {c: streams(d, input_shape) for c, d in done.items()}
    names = sorted(set().union(*[w.keys() for w in widths.values()]))
    if names:
      out += ["", "Residual-stream widths (dense → shrunk), named by the first layer writing the stream:", "",
              "| stream | " + " | ".join("coupled" if c else "per-layer" for c in done) + " |",
              "|---|" + "---|" * len(done)]
      out += [f"| `{n}` | " + " | ".join(f"{widths[c][n][0]} → {widths[c][n][1]}" if n in widths[c] else "–"
                                        for c in done) + " |" for n in names]
    out.append("")
  print("\n".join(out))


def _sections(text: str) -> dict[str, str]:
  """``## title`` → the section's text (from its heading to the next one) of an earlier table."""
  parts = text.split("\n## ")[1:]
  return {part.split("\n", 1)[0]: "## " + part for part in parts}


if __name__ == "__main__":
  main()
