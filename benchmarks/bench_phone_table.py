"""Is the pruned model faster? Every TFLite variant of a finished run, timed in LiteRT (batch 1).

    python benchmarks/bench_phone_table.py runs/lenet5_mobileprune [--round-to 8] [--repeats 300] \
        [--out experiments/results/phone_table.md]

For each finished workdir: float32 / float16 / dynamic int8 / static int8 × dense / shrunk /
shrunk with widths rounded to ``--round-to`` (from the run's final model, ``surgery.shrink``):
file size, LiteRT median latency with 1 thread and with all threads (XNNPACK on, the
interpreter's default), and for static int8 the top-1 agreement with float32 and the accuracy
on the data set's whole test split (calibrated on its first 1,000 training examples). Latencies are
measured on this machine in one process, variants interleaved; compare ratios, not absolute
times. ``docs/android.md`` shows how to time the same files on a phone.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess

import numpy as np

from mobileprune_jax import data, export, surgery
from mobileprune_jax.train import inputs

VARIANTS = ((None, "float32"), ("float16", "float16"), ("dynamic_int8", "dynamic int8"), ("int8", "static int8"))


def _commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def models_of(workdir: pathlib.Path, round_to: int):
  """(name, model) for dense, shrunk and shrunk-rounded, and the run's data set."""
  summary = json.loads((workdir / "summary.json").read_text())
  ds = data.load(summary["dataset"])
  shape = tuple(summary.get("input_shape") or ds.input_shape)
  if ds.input_shape != shape:  # a run with pad_to (e.g. 28×28 digits zero-padded to 32×32 for a MobileNet)
    ds = inputs.pad_images(ds, shape[0])
  dense = surgery.load_expanded(workdir / "model")  # the dense architecture holding the final weights (zeros cut)
  x = ds.test_x[:2]
  shrunk = surgery.shrink(dense, x)
  rounded = surgery.shrink(dense, x, round_to=round_to)
  return [("dense", dense), ("shrunk", shrunk), (f"shrunk, round_to={round_to}", rounded)], ds, summary


def table(workdir: pathlib.Path, round_to: int, repeats: int) -> list[str]:
  models, ds, summary = models_of(workdir, round_to)
  x = np.asarray(ds.test_x[:1], np.float32)
  calibration = [ds.train_x[i : i + 100] for i in range(0, min(len(ds.train_x), export.CALIBRATION_LIMIT), 100)]
  out_dir = workdir / "phone_table"
  rows = [f"### {summary['model']} on {summary['dataset']} ({workdir.name}, made at commit {_commit()})", "",
          "| model | params | variant | file size (B) | latency 1 thread (ms) | latency all threads (ms) | "
          "int8 agreement / accuracy |", "|---|---:|---|---:|---:|---:|---|"]
  for name, model in models:
    params = surgery.count_params(model)
    for quantize, label in VARIANTS:
      path = out_dir / f"{name.split(',')[0]}{'_r' if ',' in name else ''}_{label.replace(' ', '_')}.tflite"
      export.to_tflite(model, x, path, quantize=quantize, calibration_data=calibration if quantize == "int8" else None)
      one = export.latency_ms(path, x, threads=1, repeats=repeats)
      many = export.latency_ms(path, x, threads=None, repeats=repeats)
      extra = ""
      if quantize == "int8":
        a = export.agreement(path, model, ds.test_x, ds.test_y)
        extra = f"{100 * a['top1_agreement']:.2f} % / {100 * a['accuracy_int8']:.2f} % (float32 " \
                f"{100 * a['accuracy_float32']:.2f} %)"
      rows.append(f"| {name} | {params:,} | {label} | {path.stat().st_size:,} | {one:.4f} | {many:.4f} | {extra} |")
      print(rows[-1], flush=True)
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+", type=pathlib.Path)
  parser.add_argument("--round-to", type=int, default=8)
  parser.add_argument("--repeats", type=int, default=300)
  parser.add_argument("--out", type=pathlib.Path, default=None, help="also write the tables to this markdown file")
  args = parser.parse_args()
  if args.round_to < 1 or args.repeats < 1:
    parser.error("--round-to and --repeats must be positive")
  lines = ["# TFLite variants: dense vs shrunk vs rounded", "",
           f"Regenerate: `python benchmarks/bench_phone_table.py {' '.join(map(str, args.workdirs))} --round-to "
           f"{args.round_to} --repeats {args.repeats}`. LiteRT on the CPU of the machine that ran it, batch 1, "
           "XNNPACK on; a shared machine: compare within a table. *dense* is the run's final (sparse) weights at "
           "full width (`surgery.load_expanded`): what a phone runs without surgery. Static int8 agreement and "
           "accuracy are on the data set's whole test split (a run trained with a test subset reported its accuracy on "
           "fewer examples), calibrated on its first 1,000 training examples.", ""]
  for workdir in args.workdirs:
    lines += table(workdir, args.round_to, args.repeats) + [""]
  if args.out is not None:
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
  main()
