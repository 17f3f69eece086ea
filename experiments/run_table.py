"""Runs a list of configs × data sets and writes a markdown table of their summaries.

    python experiments/run_table.py --out experiments/results/lenet_comparison.md \
        --datasets mnist_subset fashion_mnist_idx --configs lenet300_mobileprune lenet300_degl ...
"""

from __future__ import annotations

import argparse
import json
import pathlib

from mobileprune_jax import config as config_lib
from mobileprune_jax.train import pipeline

HERE = pathlib.Path(__file__).parent


def row(s: dict) -> str:
  base = f"{100 * s['base_accuracy']:.2f}" if s["base_accuracy"] is not None else "–"
  return (f"| {s['dataset']} | {s['model']} | {s['method']} | {base} | {100 * s['pruned_accuracy']:.2f} | "
          f"{s['params_remaining']:,} ({100 * s['params_remaining'] / s['params_total']:.2f} %) | "
          f"{s['nonzero_params']:,} ({100 * s['nonzero_params'] / s['params_total']:.2f} %) | "
          f"{s['macs_pruned']:,} ({100 * s['macs_pruned'] / s['macs_dense']:.2f} %) | {s['architecture']} |")


HEADER = ("| data | model | method | base acc % | pruned acc % | params (shrunk) | non-zero | MACs (compacted) | architecture |\n"
          "|---|---|---|---|---|---|---|---|---|")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", nargs="+", required=True)
  parser.add_argument("--datasets", nargs="+", default=["mnist_subset"])
  parser.add_argument("--workdir", default="runs/table")
  parser.add_argument("--out", default="experiments/results/table.md")
  args = parser.parse_args()
  rows = []
  for dataset in args.datasets:
    for name in args.configs:
      workdir = pathlib.Path(args.workdir) / f"{name}_{dataset}"
      summary_path = workdir / "summary.json"
      if summary_path.exists():
        summary = json.loads(summary_path.read_text())
      else:
        cfg = config_lib.load_config(HERE / "configs" / f"{name}.py")
        config_lib.apply_overrides(cfg, [f"dataset={dataset}", "progress=False"])
        summary = pipeline.run(cfg, workdir, resume=workdir.exists())
      rows.append(row(summary))
      out = pathlib.Path(args.out)
      out.parent.mkdir(parents=True, exist_ok=True)
      preface = (f"Made by `python experiments/run_table.py --configs {' '.join(args.configs)} --datasets "
                 f"{' '.join(args.datasets)}` (one seed; base = after dense pretraining; params = the shrunk model; "
                 "MACs in the papers' compacted convention; architecture = conv filters / dense inputs alive).\n\n")
      out.write_text(preface + HEADER + "\n" + "\n".join(rows) + "\n")
      print(rows[-1], flush=True)


if __name__ == "__main__":
  main()
