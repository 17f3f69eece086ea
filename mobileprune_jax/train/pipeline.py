"""The research workflow: train → sparsify → prune → retrain (→ repeat) → shrink → measure.

This module is the stable entry point; the pieces live in their own modules:

* ``phases``: the phases of each method and the step each builds from a model,
* ``actions``: DEGL's unit threshold and the magnitude threshold,
* ``state``: ``RunState``, the checkpointed position of a run,
* ``checkpoints``: checksummed checkpoints with fallback, ``lock``: the workdir lock,
* ``inputs``: checked data, model and batch geometry,
* ``loop``: the state machine (restore first, then build), ``report``: finishing and summary,
* ``budget``: pruning to a size (a controller on one multiplier of the penalty).

Outputs in the workdir: ``log.jsonl`` (one line per epoch / phase event, identical with or
without interruptions), ``timing.jsonl`` (wall-clock times), ``summary.json``, ``model/``
(``surgery.save``), ``checkpoints/``.
"""

from mobileprune_jax.train.actions import degl_threshold, magnitude_threshold
from mobileprune_jax.train.budget import BudgetNotReachedError
from mobileprune_jax.train.checkpoints import CheckpointError, Checkpoints, ConfigMismatchError
from mobileprune_jax.train.inputs import create_model, load_data
from mobileprune_jax.train.lock import WorkdirBusyError, WorkdirError
from mobileprune_jax.train.loop import RunInterrupted, config_fingerprint, run
from mobileprune_jax.train.phases import (
    Phase,
    Stepper,
    build_phases,
    learning_rate,
    output_layer_rules,
    prox_factory,
    regulariser,
)
from mobileprune_jax.train.report import finish, format_summary
from mobileprune_jax.train.state import RunState

__all__ = ["BudgetNotReachedError", "CheckpointError", "Checkpoints", "ConfigMismatchError", "Phase",
           "RunInterrupted", "RunState", "Stepper", "WorkdirBusyError", "WorkdirError", "build_phases",
           "config_fingerprint", "create_model", "degl_threshold", "finish", "format_summary", "learning_rate",
           "load_data", "magnitude_threshold", "output_layer_rules", "prox_factory", "regulariser", "run"]
