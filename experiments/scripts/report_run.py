"""One run's summary as a markdown table (for experiments/results/), with the commit and command that made it.

    python experiments/scripts/report_run.py runs/mbv2_quick \\
        --command "python -m mobileprune_jax run --config experiments/configs/mobilenet_v2_fashion_mnist.py:quick \\
        --workdir runs/mbv2_quick --config.export.tflite=True" > experiments/results/mobilenet_v2.md
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess


def _commit() -> str:
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           check=True).stdout
    return head.strip() + (" (with uncommitted changes)" if dirty.strip() else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _minutes(workdir: pathlib.Path) -> str:
  """Wall time of the run's processes (sum over resumes), from timing.jsonl."""
  path = workdir / "timing.jsonl"
  if not path.exists():
    return "?"
  events = [json.loads(line) for line in path.read_text().splitlines()]
  total, start, last = 0.0, None, None
  for e in events:
    if e["event"] == "start":
      if start is not None:  # the previous process was killed after its last event
        total += last - start
      start = e["time"]
    elif e["event"] == "finished" and start is not None:
      total += e["time"] - start
      start = None
    last = e["time"]
  if start is not None:
    total += last - start
  return f"{total / 60:.1f}"


def table(workdir: pathlib.Path, command: str, commit: str | None = None, caveat: str = "") -> str:
  s = json.loads((workdir / "summary.json").read_text())
  pct = lambda a, b: f"{100 * a / b:.2f} %"
  rows = [
      ("test accuracy (dense → pruned)", f"{100 * s['base_accuracy']:.2f} % → {100 * s['pruned_accuracy']:.2f} %"),
      *([("validation accuracy (dense → pruned)", f"{100 * s['base_val_accuracy']:.2f} % → "
                                                   f"{100 * s['val_accuracy']:.2f} %")]
        if s.get("val_size") else []),
      ("parameters of the rebuilt model", f"{s['params_total']:,} → {s['params_remaining']:,} "
                                          f"({pct(s['params_remaining'], s['params_total'])})"),
      ("non-zero parameters", f"{s['nonzero_params']:,} ({pct(s['nonzero_params'], s['params_total'])})"),
      ("MACs (compacted)", f"{s['macs_dense']:,} → {s['macs_pruned']:,} ({pct(s['macs_pruned'], s['macs_dense'])})"),
      *([("architecture (dense → pruned)", f"{s['architecture_dense']} → {s['architecture']}")]
        if "architecture" in s else []),
      *[(f"budget: {kind} (target → reached)", f"{100 * target:.2f} % → {100 * s['budget']['reached'][kind]:.2f} %")
        for kind, target in (s.get("budget") or {}).get("target", {}).items()],
      ("shrink parity (max abs diff)", f"{s['shrink_max_abs_diff']:.1e}"),
  ]
  if "tflite_bytes_dense" in s:
    rows += [
        ("TFLite file (dense → shrunk)", f"{s['tflite_bytes_dense']:,} → {s['tflite_bytes_pruned']:,} B"),
        ("LiteRT latency, batch 1, 1 thread", f"{s['latency_dense_ms']:.3f} → {s['latency_pruned_ms']:.3f} ms "
                                              f"(ratio {s['latency_ratio']:.3f}; MACs ratio {s['macs_ratio']:.3f})"),
    ]
  lines = [f"# {s['name']}: {s['model']} on {s['dataset']}, {s['method']} ({s['mode']})", "",
           f"Made by `{command}` at commit {commit or _commit()}; {_minutes(workdir)} min on this machine (2 CPU "
           "cores, shared). One seed; latencies are medians of repeated runs and vary by ±40 % between runs here.",
           *([ "", caveat] if caveat else []), "",
           "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
  widths = s["shrink"]["layers"]
  changed = [w for w in widths if w["out_after"] < w["out_before"] or w["in_after"] < w["in_before"]]
  lines += ["", f"{len(changed)} of {len(widths)} layers shrank:", "", "| layer | kind | in | out |", "|---|---|---|---|"]
  lines += [f"| `{w['path']}` | {w['kind']} | {w['in_before']} → {w['in_after']} | {w['out_before']} → {w['out_after']} |"
            for w in changed]
  return "\n".join(lines) + "\n"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir", type=pathlib.Path)
  parser.add_argument("--command", required=True, help="the command that made the run (printed in the table)")
  parser.add_argument("--commit", help="the commit the run was made at (default: the checkout's HEAD)")
  parser.add_argument("--caveat", default="", help="a sentence on what the numbers do and do not show")
  args = parser.parse_args()
  print(table(args.workdir, args.command, args.commit, args.caveat), end="")


if __name__ == "__main__":
  main()
