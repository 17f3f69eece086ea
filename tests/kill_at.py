"""``python tests/kill_at.py NAME:N ARGS…``: the command line (``python -m mobileprune_jax ARGS…``) that SIGKILLs
itself, as a preempted machine would, the N-th time the run passes the named point (``train.events.POINTS``)."""

import os
import signal
import sys

from mobileprune_jax import __main__ as cli
from mobileprune_jax.train import events


def install(target: str) -> None:
  name, _, count = target.partition(":")
  if name not in events.POINTS:
    raise SystemExit(f"unknown point {name!r}; choose one of {events.POINTS}")
  seen = [0]

  def hook(point: str) -> None:
    if point == name:
      seen[0] += 1
      if seen[0] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)

  events.add_hook(hook)


if __name__ == "__main__":
  install(sys.argv[1])
  sys.exit(cli.main(sys.argv[2:]))
