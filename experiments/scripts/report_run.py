"""One run's summary as a markdown table (for experiments/results/), with the commit and command that made it.

    python experiments/scripts/report_run.py runs/mbv2_quick \\
        --command "python -m mobileprune_jax run --config experiments/configs/mobilenet_v2_fashion_mnist.py:quick \\
        --workdir runs/mbv2_quick --config.export.tflite=True" > experiments/results/mobilenet_v2.md

``--readme README.md`` also writes the key-value table and its provenance line between the README's
``<!-- readme_job -->`` and ``<!-- /readme_job -->`` markers (the README's main-job numbers are never typed by hand).
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


README_START, README_END = "<!-- readme_job -->", "<!-- /readme_job -->"


def readme_block(table_text: str) -> str:
  """The key-value rows of a ``table`` and its provenance, as the README shows them."""
  lines = table_text.splitlines()
  made = next(line for line in lines if line.startswith("Made by"))
  commit = made.split(" at commit ", 1)[1].split(";", 1)[0]
  minutes = made.split("; ", 1)[1].split(" min ", 1)[0]
  start = lines.index("| | |")
  end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
  return "\n".join(lines[start:end] + ["", f"Measured at commit {commit} on a shared 2-core CPU machine "
                                             f"({minutes} min wall); one seed."])


def write_readme(readme: pathlib.Path, table_text: str) -> None:
  text = readme.read_text()
  head, rest = text.split(README_START, 1)
  _, tail = rest.split(README_END, 1)
  readme.write_text(f"{head}{README_START}\n{readme_block(table_text)}\n{README_END}{tail}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir", type=pathlib.Path)
  parser.add_argument("--command", required=True, help="the command that made the run (printed in the table)")
  parser.add_argument("--commit", help="the commit the run was made at (default: the checkout's HEAD)")
  parser.add_argument("--caveat", default="", help="a sentence on what the numbers do and do not show")
  parser.add_argument("--readme", type=pathlib.Path, help="also update this README's main-job block")
  args = parser.parse_args()
  text = table(args.workdir, args.command, args.commit, args.caveat)
  if args.readme:
    write_readme(args.readme, text)
  print(text, end="")


if __name__ == "__main__":
  main()
