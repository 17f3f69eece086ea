"""TFLite export of (shrunk) NNX models, LiteRT output parity, and latency.

Route: ``jax2tf.convert`` (no gradient) → ``tf.function`` with a static input signature →
``tf.lite.TFLiteConverter.from_concrete_functions`` with builtin ops only. The model runs
in inference mode (BatchNorm running statistics, no dropout) at the batch size of
``sample_input``. TensorFlow and ai-edge-litert are needed only here::

    pip install -r requirements-export.txt      # or: pip install .[export]

Parity (on by default) runs the file in ``ai_edge_litert``'s interpreter on the sample and
random inputs and compares with JAX; a mismatch raises. Tolerances (max abs difference,
relative to max(1, max |JAX output|)): float32 1e-5; float16 weights 2e-2; dynamic-range
int8 1e-1 (weights are quantised to 8 bits, so logits move by a few per cent); static int8 0.25
on the calibration examples (activations are 8-bit too). For int8 the measure that matters is
``agreement``: top-1 agreement with float32 and accuracy on a labelled split.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
import warnings
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
from flax import nnx

from mobileprune_jax import data, int8, metrics, quiet, surgery
from mobileprune_jax.nnx_only import EXPORT_ROUTE, require_nnx
from mobileprune_jax.surgery.depgraph import forward_fn

QUANTIZE = (None, "float16", "dynamic_int8", "int8")
# int8: measured on the calibration examples (in-distribution), not on random inputs, which saturate
TOLERANCE = {None: 1e-5, "float16": 2e-2, "dynamic_int8": 1e-1, "int8": 0.25}
CALIBRATION_LIMIT = 1000  # examples; more rarely moves the activation ranges
INSTALL_HINT = "TFLite export needs TensorFlow and ai-edge-litert: pip install -r requirements-export.txt"


class ParityError(AssertionError):
  """The TFLite file's outputs differ from the JAX model's."""


def _tf():
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    with quiet.native_stderr_hidden():
      import tensorflow as tf
      from jax.experimental import jax2tf
  except ImportError as e:
    raise ImportError(INSTALL_HINT) from e
  return tf, jax2tf


def _interpreter(path: str | pathlib.Path, threads: int | None = 1):
  try:
    from ai_edge_litert.interpreter import Interpreter
  except ImportError as e:
    raise ImportError(INSTALL_HINT) from e
  with quiet.native_stderr_hidden():  # "Created TensorFlow Lite XNNPACK delegate for CPU" (first run only)
    interpreter = Interpreter(model_path=str(path), num_threads=threads if threads else os.cpu_count())
    interpreter.allocate_tensors()
  return interpreter


def _forward(model: nnx.Module):
  """``f(x) = model(x)`` in inference mode (a ``train=True`` default of its call included), its state as raw arrays
  (the Variables are rebuilt inside the trace): ``depgraph.forward_fn``."""
  _, leaves, _, f = forward_fn(model)
  return lambda x: f(leaves, x)


def to_tflite(model: nnx.Module, sample_input: Any, path: str | pathlib.Path, quantize: str | None = None,
              check: bool = True, calibration_data: Iterable[Any] | None = None) -> pathlib.Path:
  """Writes ``model`` as a .tflite file (static input shape = ``sample_input``'s) and returns the path.

  ``quantize="int8"`` is full-integer: int8 weights, activations, input and output, calibrated on
  ``calibration_data`` through the TFLite converter's representative dataset. That route was chosen
  over ai-edge-quantizer because it is the same conversion as every other variant (one route, no extra
  dependency, the converter's kernels are what LiteRT runs) and it quantises the input and output
  tensors, which integer-only accelerators need. ``run_tflite`` quantises inputs and dequantises
  outputs with the file's scales.

  Args:
    model: an NNX module (exported in inference mode, a ``train=True`` default of its call included:
      ``surgery.depgraph.inference_kwargs``; the module itself is not changed).
    sample_input: an input batch; its shape and dtype become the file's static signature.
    path: where to write the file.
    quantize: None (float32), "float16" (float16 weights), "dynamic_int8" (int8 weights, float
      activations) or "int8" (static, full-integer).
    check: run the LiteRT parity check (raises ``ParityError`` on a mismatch); for "int8" on the
      calibration examples, relative to the largest float32 output.
    calibration_data: for "int8" only: a sequence or iterator of input batches (training data, not the
      test split); the first ``CALIBRATION_LIMIT`` examples are used.

  Raises:
    ValueError: an unknown ``quantize``, "int8" without calibration data (or calibration data
      without "int8"), or calibration batches of the wrong shape or holding NaN / inf.

  Examples:
    >>> import tempfile
    >>> import jax.numpy as jnp, numpy as np
    >>> from flax import nnx
    >>> from mobileprune_jax import export
    >>> model = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    >>> x = jnp.ones((1, 4))
    >>> path = export.to_tflite(model, x, tempfile.mkdtemp() + "/linear.tflite")  # checks LiteRT parity
    >>> np.allclose(export.run_tflite(path, np.asarray(x)), model(x), atol=1e-5)
    True
  """
  require_nnx(model, "export.to_tflite", EXPORT_ROUTE)
  if quantize not in QUANTIZE:
    raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
  if (quantize == "int8") != (calibration_data is not None):
    raise ValueError("quantize='int8' needs calibration_data (input batches), and only it takes them")
  x = np.asarray(sample_input)
  examples = (int8.calibration_examples(calibration_data, x.shape[1:], CALIBRATION_LIMIT, x.dtype)
              if quantize == "int8" else None)
  if examples is not None and len(examples) < len(x):
    raise ValueError(f"calibration_data holds {len(examples)} examples; the file's batch is {len(x)}")
  with quiet.native_stderr_hidden():  # TensorFlow's C++ start-up and converter lines (errors still raise)
    blob = _convert(model, x, quantize, examples)
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(blob)
  if check:
    diff = parity(path, model, x, inputs=None if examples is None else examples[:64])
    tol = TOLERANCE[quantize]
    if not diff <= tol:
      raise ParityError(f"{path}: LiteRT output differs from JAX by {diff:.3g} (> {tol}, quantize={quantize})")
  return path


def _convert(model: nnx.Module, x: np.ndarray, quantize: str | None, examples: np.ndarray | None) -> bytes:
  """The TFLite flatbuffer of ``model`` at the input ``x``'s shape (see ``to_tflite``)."""
  tf, jax2tf = _tf()
  f = _forward(model)
  tf_fn = tf.function(jax2tf.convert(f, with_gradient=False, native_serialization_platforms=("cpu",)),
                      input_signature=[tf.TensorSpec(x.shape, tf.as_dtype(x.dtype))], autograph=False)
  converter = tf.lite.TFLiteConverter.from_concrete_functions([tf_fn.get_concrete_function()], tf_fn)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
  if quantize:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
      converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
      converter.representative_dataset = int8.representative_dataset(examples, len(x))
      converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
      converter.inference_input_type = converter.inference_output_type = tf.int8
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="Statistics for quantized inputs")  # the I/O scales are calibrated
    return converter.convert()


def run_tflite(path: str | pathlib.Path, x: np.ndarray, threads: int | None = 1) -> np.ndarray:
  """Runs a .tflite file on one input batch in the LiteRT interpreter."""
  return _Runner(path, threads)(x)


class _Runner:
  """One interpreter for many inputs: quantises inputs and dequantises outputs of integer files."""

  def __init__(self, path: str | pathlib.Path, threads: int | None = 1):
    self.interpreter = _interpreter(path, threads)
    self.input, self.output = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]

  def __call__(self, x: np.ndarray) -> np.ndarray:
    self.interpreter.set_tensor(self.input["index"], int8.quantize_input(x, self.input))
    self.interpreter.invoke()
    return int8.dequantize_output(self.interpreter.get_tensor(self.output["index"]), self.output)


def agreement(path: str | pathlib.Path, model: nnx.Module, x: Any, labels: Any = None) -> dict[str, float]:
  """Top-1 agreement of a (quantised) file with the JAX float32 model on ``x`` (and both accuracies on ``labels``).

  ``x`` holds any number of examples; they run through the file in batches of its static batch size
  (a remainder that does not fill one is left out).
  """
  runner = _Runner(path)
  batch = int(runner.input["shape"][0])
  x = np.asarray(x)
  n = len(x) // batch * batch
  if n == 0:
    raise ValueError(f"agreement needs at least {batch} examples, got {len(x)}")
  got = np.concatenate([runner(x[i : i + batch]) for i in range(0, n, batch)])
  f = jax.jit(_forward(model))
  ref = np.concatenate([np.asarray(f(x[i : i + 256])) for i in range(0, n, 256)])[:n]
  return int8.agreement(got, ref, None if labels is None else np.asarray(labels)[:n])


def parity(path: str | pathlib.Path, model: nnx.Module, sample_input: Any, n_random: int = 3, seed: int = 0,
           inputs: np.ndarray | None = None) -> float:
  """max |LiteRT − JAX| / max(1, max |JAX|) over the sample and ``n_random`` random inputs.

  With ``inputs`` (examples, e.g. calibration data of an int8 file): over those instead, in batches of
  the sample's size.
  """
  x0 = np.asarray(sample_input)
  if inputs is not None:
    b = len(x0)
    xs = [np.asarray(inputs[i : i + b], x0.dtype) for i in range(0, len(inputs) - b + 1, b)]
  else:
    rng = np.random.default_rng(seed)
    xs = [x0] + [rng.normal(size=x0.shape).astype(x0.dtype) for _ in range(n_random)]
  f = jax.jit(_forward(model))
  runner = _Runner(path)
  worst = 0.0
  for x in xs:
    ref = np.asarray(f(x), np.float64)
    got = runner(x).astype(np.float64)
    worst = max(worst, float(np.max(np.abs(got - ref)) / max(1.0, float(np.max(np.abs(ref))))))
  return worst


def latency_ms(path: str | pathlib.Path, sample_input: Any, threads: int | None = 1, warmup: int = 20,
               repeats: int = 200) -> float:
  """Median wall time (ms) of one ``invoke`` at the file's batch size, after warm-up."""
  if repeats < 1 or warmup < 0:
    raise ValueError(f"latency_ms needs repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
  interpreter = _interpreter(path, threads)
  inp = interpreter.get_input_details()[0]
  interpreter.set_tensor(inp["index"], int8.quantize_input(np.asarray(sample_input), inp))
  for _ in range(warmup):
    interpreter.invoke()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    interpreter.invoke()
    times.append(time.perf_counter() - t0)
  return 1e3 * float(np.median(times))


def compare(dense: nnx.Module, pruned: nnx.Module, sample_input: Any, directory: str | pathlib.Path,
            repeats: int = 200) -> dict[str, Any]:
  """Exports both models (batch 1) and measures file sizes and LiteRT latency (1 and all threads)."""
  directory = pathlib.Path(directory)
  x = np.asarray(sample_input)[:1]
  paths = {k: to_tflite(m, x, directory / f"{k}.tflite") for k, m in (("dense", dense), ("pruned", pruned))}
  out: dict[str, Any] = {"tflite_path": str(paths["pruned"]), "tflite_path_dense": str(paths["dense"])}
  for k, p in paths.items():
    out[f"tflite_bytes_{k}"] = p.stat().st_size
    out[f"latency_{k}_ms"] = latency_ms(p, x, threads=1, repeats=repeats)
    out[f"latency_{k}_ms_all_threads"] = latency_ms(p, x, threads=None, repeats=repeats)
  macs_dense = metrics.macs(dense, x)
  macs_pruned = sum(s.macs_dense for s in metrics.layer_stats(pruned, x))  # what the dense kernels of the file cost
  out["macs_ratio"] = macs_pruned / macs_dense
  out["latency_ratio"] = out["latency_pruned_ms"] / out["latency_dense_ms"]
  out["latency_target_met"] = out["latency_ratio"] <= 1.5 * out["macs_ratio"] + 0.05
  return out


def benchmark_workdir(workdir: str | pathlib.Path, repeats: int = 200) -> dict[str, Any]:
  """Exports the dense and the shrunk model of a finished run and times both in LiteRT.

  Writes ``<workdir>/tflite/{dense,pruned}.tflite`` and ``<workdir>/benchmark.json``. Every check below
  happens before anything is exported.

  Raises:
    ValueError: ``repeats`` < 1, a workdir that is not a finished run's directory, an unreadable
      ``summary.json``, an input shape the model does not take, or a model holding NaN / inf.
    FileNotFoundError: no ``summary.json`` or ``model/``.
    surgery.ModelFileError: a damaged model directory.
  """
  if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
    raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
  workdir = pathlib.Path(workdir)
  if not workdir.exists():
    raise FileNotFoundError(f"workdir {workdir} does not exist")
  if not workdir.is_dir():
    raise ValueError(f"workdir {workdir} is not a directory (pass the --workdir of a finished run)")
  summary_path = workdir / "summary.json"
  if not summary_path.is_file():
    raise FileNotFoundError(f"{workdir} has no summary.json: not a finished run (finish it with run --resume)")
  try:
    summary = json.loads(summary_path.read_text())
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{summary_path} is not readable JSON ({e})") from None
  if not isinstance(summary, dict):
    raise ValueError(f"{summary_path} is not a run summary")
  dense = surgery.build_original(workdir / "model")
  pruned = surgery.load(workdir / "model")
  _check_finite_weights(pruned, workdir / "model")
  shape = _input_shape(summary, summary_path)
  x = np.zeros((1, *shape), np.float32)
  for name, model in (("dense", dense), ("shrunk", pruned)):
    try:
      jax.eval_shape(_forward(model), x)
    except Exception as e:  # noqa: BLE001 - XLA / flax shape errors of many types
      first = " ".join(str(e).split("\n")[0].split())[:200]
      raise ValueError(f"{summary_path}: input_shape {list(shape)} does not fit the {name} model ({first})") from None
  result = compare(dense, pruned, x, workdir / "tflite", repeats=repeats)
  result["macs_dense"], result["macs_pruned_compacted"] = summary.get("macs_dense"), summary.get("macs_pruned")
  (workdir / "benchmark.json").write_text(json.dumps(result, indent=1))
  return result


def _input_shape(summary: dict[str, Any], summary_path: pathlib.Path) -> tuple[int, ...]:
  """The per-example input shape a summary records (older summaries: the data set's)."""
  shape = summary.get("input_shape")
  if shape is None:  # summaries written before input_shape was recorded: ask the data set
    name = summary.get("dataset")
    if not isinstance(name, str):
      raise ValueError(f"{summary_path} has neither 'input_shape' nor 'dataset': not a run summary")
    try:
      shape = data.load(name).input_shape
    except (data.DataUnavailableError, data.InvalidDataError, ValueError, OSError) as e:
      raise ValueError(f"{summary_path} has no 'input_shape' and data set {name!r} cannot be loaded to find it "
                       f"({' '.join(str(e).split()).split('. ')[0]}); add \"input_shape\": [...] to it") from None
  if not (isinstance(shape, (list, tuple)) and shape and
          all(isinstance(d, int) and not isinstance(d, bool) and 0 < d <= 4096 for d in shape)):
    raise ValueError(f"{summary_path}: input_shape must be a list of positive sizes, got {shape!r}")
  return tuple(shape)


def _check_finite_weights(model: nnx.Module, directory: pathlib.Path) -> None:
  bad = sum(int(np.size(a) - np.count_nonzero(np.isfinite(a))) for a in jax.tree.leaves(nnx.state(model))
            if np.issubdtype(np.asarray(a).dtype, np.floating))
  if bad:
    raise ValueError(f"{directory}: the model holds {bad} NaN/inf weights (a diverged or damaged model); "
                     "nothing was exported")


def format_benchmark(r: dict[str, Any]) -> str:
  rows = [
      ("file size dense -> pruned", f"{r['tflite_bytes_dense']:,} -> {r['tflite_bytes_pruned']:,} B "
                                    f"({r['tflite_bytes_pruned'] / r['tflite_bytes_dense']:.3f}x)"),
      ("latency 1 thread", f"{r['latency_dense_ms']:.3f} -> {r['latency_pruned_ms']:.3f} ms ({r['latency_ratio']:.3f}x)"),
      ("latency all threads", f"{r['latency_dense_ms_all_threads']:.3f} -> {r['latency_pruned_ms_all_threads']:.3f} ms"),
      ("MACs ratio (shrunk, dense kernels)", f"{r['macs_ratio']:.3f}"),
      ("target latency <= 1.5 MACs + 0.05", "met" if r["latency_target_met"] else "NOT met"),
  ]
  width = max(len(k) for k, _ in rows)
  return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
