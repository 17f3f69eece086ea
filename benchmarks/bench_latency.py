"""LiteRT latency and file size of dense vs shrunk models of finished runs (batch 1).

    python benchmarks/bench_latency.py runs/lenet5_mobileprune [runs/other ...]

Prints, per run: file sizes, median latency with 1 thread and all threads, and the latency
ratio next to the MACs ratio (target: latency ratio ≤ 1.5 × MACs ratio + 0.05).
"""

from __future__ import annotations

import argparse

from mobileprune_jax import export


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--repeats", type=int, default=500)
  args = parser.parse_args()
  for workdir in args.workdirs:
    print(workdir)
    print(export.format_benchmark(export.benchmark_workdir(workdir, repeats=args.repeats)))


if __name__ == "__main__":
  main()
