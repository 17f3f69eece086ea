"""Command line.

    python -m mobileprune_jax run --config experiments/configs/lenet5_mobileprune.py --workdir runs/lenet5 \
        [--resume] [--config.key=value ...]
    python -m mobileprune_jax demo
"""

from __future__ import annotations

import argparse
import signal
import sys
import time


def demo(args: argparse.Namespace) -> int:
  """Prunes LeNet-300-100 on the embedded MNIST subset with prox-SGD and prints its sparsity."""
  for name in ("epochs", "l0", "neuron"):
    value = getattr(args, name)
    if not (value > 0 if name == "epochs" else value >= 0) or value != value:
      print(f"error: --{name} must be {'a positive integer' if name == 'epochs' else 'a non-negative number'}, "
            f"got {value}", file=sys.stderr)
      return 2
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax
  from flax import nnx

  from mobileprune_jax import models, transforms
  from mobileprune_jax.data.embedded import load_mnist_subset

  data = load_mnist_subset()
  x_train = jnp.asarray(data["train_images"], jnp.float32) / 255.0
  y_train = jnp.asarray(data["train_labels"], jnp.int32)
  x_test = jnp.asarray(data["test_images"], jnp.float32) / 255.0
  y_test = jnp.asarray(data["test_labels"], jnp.int32)
  model = models.create("lenet300", seed=args.seed)

  def run(tx, epochs, label):
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, xb, yb):
      loss, grads = nnx.value_and_grad(
          lambda m: optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean())(model)
      opt.update(model, grads)
      return loss

    rng = np.random.default_rng(args.seed)
    for epoch in range(epochs):
      perm = rng.permutation(len(x_train))
      for i in range(0, len(perm) - 99, 100):
        idx = perm[i : i + 100]
        loss = step(model, opt, x_train[idx], y_train[idx])
      acc = float(jnp.mean(nnx.jit(lambda m, x: m(x))(model, x_test).argmax(-1) == y_test))
      print(f"  {label} epoch {epoch + 1}/{epochs}: loss {float(loss):.4f}  test acc {acc:.4f}", flush=True)
    return acc

  t0 = time.time()
  base = run(optax.adam(1e-3), args.epochs, "train")
  lr = 0.05
  pruned = run(optax.chain(optax.sgd(lr, momentum=0.9),
                           transforms.l0_sparse_group_lasso(lr, l0=args.l0, neuron=args.neuron)), args.epochs, "prune")
  params = nnx.state(model, nnx.Param)
  total = sum(p.size for p in jax.tree.leaves(params))
  nonzero = sum(int(jnp.count_nonzero(p)) for p in jax.tree.leaves(params))
  print(f"\nLeNet-300-100 on the embedded MNIST subset ({time.time() - t0:.0f} s)")
  print(f"  accuracy  dense {base:.4f} -> pruned {pruned:.4f}")
  print(f"  nonzero   {nonzero:,} / {total:,} parameters ({100 * nonzero / total:.2f} %)")
  for name in ("fc1", "fc2", "fc3"):
    k = getattr(model, name).kernel[...]
    alive = int(jnp.sum(jnp.any(k != 0, axis=1)))
    print(f"  {name}: {alive}/{k.shape[0]} input neurons alive, {int(jnp.count_nonzero(k)):,}/{k.size:,} weights")
  return 0


def run(args: argparse.Namespace, overrides: list[str]) -> int:
  """Runs a config. Bad input (config, data, model kwargs), a busy workdir or unusable checkpoints are
  one ``error:`` line and exit status 2, before any training; a diverging run is one line and status 3;
  a run that finished outside its budget's tolerance is one line and status 4 (its outputs are written);
  Ctrl-C / SIGTERM is one line saying where the run stopped, status 130 / 143 (see ``main``)."""
  from mobileprune_jax import config as config_lib
  from mobileprune_jax.data import DataUnavailableError, InvalidDataError
  from mobileprune_jax.train import pipeline

  try:
    cfg = config_lib.load_config(args.config)
    config_lib.apply_overrides(cfg, overrides)
    pipeline.run(cfg, args.workdir, resume=args.resume)
  except (config_lib.ConfigError, DataUnavailableError, InvalidDataError, FileNotFoundError, FileExistsError,
          NotADirectoryError, pipeline.WorkdirBusyError, pipeline.WorkdirError, pipeline.CheckpointError,
          pipeline.ConfigMismatchError) as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    return 2
  except FloatingPointError as e:  # the run diverged: one line, not a traceback
    print(f"error: {_one_line(e)}", file=sys.stderr)
    return 3
  except pipeline.BudgetNotReachedError as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    return 4
  except OSError as e:  # permissions, a full disk, ...: what the system said, in one line, and where
    where = "" if e.filename or args.workdir in str(e) else f" (writing in workdir {args.workdir})"
    print(f"error: {_one_line(e)}{where}", file=sys.stderr)
    return 1
  return 0


def _one_line(error: BaseException) -> str:
  return " ".join(str(error).split())


def benchmark(args: argparse.Namespace) -> int:
  """Exports the dense and the shrunk model of a finished run and prints LiteRT latency and sizes."""
  if args.repeats < 1:
    print(f"error: --repeats must be a positive integer, got {args.repeats}", file=sys.stderr)
    return 2
  from mobileprune_jax import export, surgery

  try:
    result = export.benchmark_workdir(args.workdir, repeats=args.repeats)
  except (surgery.ModelFileError, FileNotFoundError, ValueError, ImportError) as e:
    print(f"error: {_one_line(e)}", file=sys.stderr)
    return 2
  print(export.format_benchmark(result))
  return 0


def _stop(signum: int, frame) -> None:
  """Ctrl-C / SIGTERM: one line saying where the run stopped, then exit at once with 128 + the signal's number.

  Every checkpoint on disk is complete at any instant (atomic writes; a kill anywhere resumes exactly), so
  stopping here loses at most the steps since the newest checkpoint, which ``--resume`` redoes identically.
  Exiting without unwinding avoids tracebacks from wherever the signal landed (an import, XLA, a callback)."""
  import os

  what = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
  loop = sys.modules.get("mobileprune_jax.train.loop")
  where = loop.stop_active_run() if loop is not None else None
  if where is None and _COMMAND and _COMMAND[0] == "run":
    where = "before training started; nothing was changed (run the command again)"
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except Exception:  # noqa: BLE001 - interrupted in the middle of a write: nothing more to save
      pass
  quiet = sys.modules.get("mobileprune_jax.quiet")  # the signal may land while native logs are hidden
  os.write(quiet.stderr_fd() if quiet is not None else 2, (f"{what} {where}\n" if where else f"{what}\n").encode())
  os._exit(128 + signum)


_COMMAND: list[str] = []


def main(argv: list[str] | None = None) -> int:
  """The command line; returns the exit status (see the README's table of exit statuses).

  Ctrl-C (SIGINT) and SIGTERM print one line instead of a traceback (for ``run``: where the run stopped and
  that ``--resume`` continues it) and exit with 128 + the signal's number (130, 143), as a shell reports a
  process stopped by that signal. A signal the parent ignores (``nohup``) stays ignored.
  """
  handlers = {}
  for sig in (signal.SIGINT, signal.SIGTERM):
    if signal.getsignal(sig) is not signal.SIG_IGN:
      handlers[sig] = signal.signal(sig, _stop)
  try:
    return _main(argv)
  finally:
    for sig, previous in handlers.items():
      signal.signal(sig, previous)


def _main(argv: list[str] | None) -> int:
  parser = argparse.ArgumentParser(prog="python -m mobileprune_jax", description="mobileprune_jax command line")
  sub = parser.add_subparsers(dest="command", required=True)
  r = sub.add_parser("run", help="train, prune, retrain, shrink and measure a config",
                     epilog="Any --config.KEY=VALUE overrides a config entry (e.g. --config.prune.iterations=3).")
  r.add_argument("--config", required=True, help="a Python file with get_config()")
  r.add_argument("--workdir", required=True, help="where checkpoints, log.jsonl and summary.json go")
  r.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the workdir")
  b = sub.add_parser("benchmark", help="TFLite export + LiteRT latency of a finished run (dense vs shrunk)")
  b.add_argument("--workdir", required=True, help="a workdir with summary.json and model/")
  b.add_argument("--repeats", type=int, default=200)
  b.set_defaults(fn=benchmark)
  p = sub.add_parser("demo", help="prune LeNet-300-100 on the embedded MNIST subset and print its sparsity")
  p.add_argument("--epochs", type=int, default=3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--l0", type=float, default=2e-3)
  p.add_argument("--neuron", type=float, default=4e-2)
  p.set_defaults(fn=demo)
  args, rest = parser.parse_known_args(argv)
  _COMMAND[:] = [args.command]
  if args.command == "run":
    bad = [a for a in rest if not a.startswith("--config.")]
    if bad:
      parser.error(f"unrecognized arguments: {' '.join(bad)}")
    return run(args, rest)
  if rest:
    parser.error(f"unrecognized arguments: {' '.join(rest)}")
  return args.fn(args) or 0


if __name__ == "__main__":
  sys.exit(main())
