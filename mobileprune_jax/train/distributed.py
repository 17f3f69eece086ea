"""One run over several processes (hosts): start-up, who writes, and the points where processes agree.

The run is SPMD: every process executes the same program on the same (replicated) model and the same global
batches, so every decision (budget multiplier, phase actions, divergence) is computed identically everywhere.
Only process 0 writes files (checkpoints, ``log.jsonl``, ``timing.jsonl``, ``summary.json``, ``model/``, TFLite)
and holds the workdir lock; the workdir must be on a file system every process sees (as for any multi-host
checkpointing). Processes meet at barriers after each checkpoint write and check that they restored the same one.

``--config.distributed.coordinator=HOST:PORT --config.distributed.num_processes=N --config.distributed.process_id=I``
start ``jax.distributed`` before any device is touched; unset = a single process, unless the caller already called
``jax.distributed.initialize()`` (TPU pods, SLURM, … auto-detect), which the run then simply uses. On CPU the
collectives go through gloo.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from mobileprune_jax.config import ConfigError, check_distributed

KEYS = ("coordinator", "num_processes", "process_id")


def requested(cfg: ml_collections.ConfigDict) -> bool:
  return any(cfg.distributed[k] is not None for k in KEYS)


def initialize(cfg: ml_collections.ConfigDict) -> None:
  """Starts ``jax.distributed`` from the config (a no-op when no key is set or it is already running).

  Raises:
    ConfigError: ``jax.distributed`` already runs with another number of processes or another process id.
  """
  check_distributed(cfg)
  if not requested(cfg):
    return
  d = cfg.distributed
  if jax.distributed.is_initialized():
    if (d.num_processes not in (None, jax.process_count())) or (d.process_id not in (None, jax.process_index())):
      raise ConfigError(f"jax.distributed already runs as process {jax.process_index()} of {jax.process_count()}, "
                        f"but the config asks for process {d.process_id} of {d.num_processes}")
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU only; GPU/TPU use their own collectives
  jax.distributed.initialize(d.coordinator, d.num_processes, d.process_id)


def count() -> int:
  return jax.process_count()


def is_main() -> bool:
  """True in the process that writes files (process 0; the only one of a single-process run)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Every process waits here until all arrive (no-op for one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def run_token() -> int:
  """A number process 0 draws and every process receives: names one multi-process run (e.g. in the lock file)."""
  token = np.asarray(np.random.default_rng().integers(1, 2**31 - 1), np.int32)
  if jax.process_count() == 1:
    return int(token)
  return int(multihost_utils.broadcast_one_to_all(token))


def agree(flag: bool) -> bool:
  """Process 0's ``flag``, in every process (e.g. whether it could take the lock)."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(bool(flag), np.int32)))


def check_same(value: Any, what: str) -> None:
  """Raises RuntimeError when the processes hold different ``value`` s (an int or an array)."""
  if jax.process_count() == 1:
    return
  multihost_utils.assert_equal(np.asarray(value), f"the processes of the run disagree on {what}")
