"""Full-integer (static int8) TFLite: calibration batches, quantised I/O, and agreement with float32.

A static int8 file has int8 weights *and* activations, with int8 input and output tensors
(``q = round(x / scale) + zero_point``), which is what phone NPUs, DSPs and microcontrollers run.
Its quality is not a max-error bound (8-bit activations move logits by several per cent) but
how often it predicts what the float32 model predicts: ``agreement`` measures top-1 agreement
and the accuracy of both on labelled data.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np


def calibration_examples(calibration_data: Iterable[Any], example_shape: tuple[int, ...],
                         limit: int | None = None, dtype: Any = np.float32) -> np.ndarray:
  """Stacks the examples of ``calibration_data`` (a sequence or iterator of input batches) as ``dtype``
  (the file's input dtype: float32 images, or integer token ids).

  Args:
    calibration_data: batches shaped ``(n, *example_shape)`` (or single examples shaped ``example_shape``).
    example_shape: the model's per-example input shape.
    limit: keep at most this many examples (None: all).

  Raises:
    ValueError: no batches, a batch of another shape, or NaN / inf in a batch.
  """
  if calibration_data is None or isinstance(calibration_data, (str, bytes)):
    raise ValueError(f"calibration_data must be a sequence or iterator of input batches, got {calibration_data!r}")
  try:
    batches = iter(calibration_data)
  except TypeError:
    raise ValueError("calibration_data must be a sequence or iterator of input batches, got "
                     f"{type(calibration_data).__name__}") from None
  examples, count = [], 0
  for i, batch in enumerate(batches):
    b = np.asarray(batch)
    if b.shape == tuple(example_shape):
      b = b[None]
    if b.shape[1:] != tuple(example_shape) or b.shape[0] == 0:
      raise ValueError(f"calibration batch {i} has shape {b.shape}; the model takes (n, {', '.join(map(str, example_shape))})")
    if b.dtype.kind == "f" and not np.isfinite(b).all():
      raise ValueError(f"calibration batch {i} holds NaN or inf")
    examples.append(b.astype(dtype))
    count += len(b)
    if limit is not None and count >= limit:
      break
  if not examples:
    raise ValueError("calibration_data holds no batches")
  x = np.concatenate(examples)
  return x[:limit] if limit is not None else x


def representative_dataset(examples: np.ndarray, batch: int):
  """The converter's ``representative_dataset``: the examples in batches of the file's static batch size."""
  def generate() -> Iterator[list[np.ndarray]]:
    for start in range(0, len(examples) - batch + 1, batch):
      yield [examples[start : start + batch]]
  return generate


def quantize_input(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
  """Float input → the file's integer input (identity for a float input tensor)."""
  dtype = np.dtype(detail["dtype"])
  scale, zero = detail["quantization"]
  if dtype.kind == "f" or not scale:
    return np.asarray(x, dtype)
  info = np.iinfo(dtype)
  return np.clip(np.round(np.asarray(x, np.float64) / scale) + zero, info.min, info.max).astype(dtype)


def dequantize_output(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
  """The file's integer output → float32 (identity for a float output tensor)."""
  scale, zero = detail["quantization"]
  if np.dtype(detail["dtype"]).kind == "f" or not scale:
    return np.asarray(y, np.float32)
  return ((np.asarray(y, np.float32) - zero) * scale).astype(np.float32)


def agreement(int8_logits: np.ndarray, float_logits: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
  """Top-1 agreement of the int8 and float32 models, and their accuracies when ``labels`` are given.

  agreement = mean(argmax int8 = argmax float32).
  """
  a, b = np.argmax(int8_logits, -1), np.argmax(float_logits, -1)
  out = {"top1_agreement": float(np.mean(a == b))}
  if labels is not None:
    labels = np.asarray(labels)
    out["accuracy_int8"] = float(np.mean(a == labels))
    out["accuracy_float32"] = float(np.mean(b == labels))
  return out
