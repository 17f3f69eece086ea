"""Kernels that are one parameter seen through an axis permutation and reversals.

``lax.conv_transpose(..., transpose_kernel=True)`` (``nnx.ConvTranspose`` in PyTorch's layout) flips
the spatial axes of its (*spatial, out, in) kernel and swaps the last two before the convolution;
user code writes ``x @ w.T``. The convolution then sees a kernel whose every entry is still one
entry of the parameter, so its channels can be cut on the parameter's own axes.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class KernelView:
  """A kernel operand that is parameter ``path`` with its axes permuted (and some reversed).

  Attributes:
    path: the parameter's path.
    value: the parameter itself (its own axis order).
    axis_of: for every axis of the kernel operand, the parameter axis it runs along.
    reversed: the kernel operand's axes that run backwards along their parameter axis.
  """

  path: str
  value: np.ndarray
  axis_of: tuple[int, ...]
  reversed: frozenset[int]


def _line(coords: np.ndarray, axis: int) -> np.ndarray:
  return np.moveaxis(coords, axis, 0).reshape(coords.shape[axis], -1)[:, 0]


def view(value: np.ndarray, origin: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> KernelView | None:
  """The ``KernelView`` of a constant operand (``value``, flat indices ``origin`` into parameters), or None.

  None unless every entry comes from one parameter of ``shapes``, each exactly once, along axes that
  are a permutation of the parameter's, each running forwards or backwards.
  """
  if len(origin) != 1:
    return None
  (path, idx), = origin.items()
  shape = tuple(shapes.get(path, ()))
  if len(shape) != idx.ndim or math.prod(shape) != idx.size or idx.size == 0 or (idx < 0).any():
    return None
  coords = np.unravel_index(idx, shape)
  axis_of: dict[int, int] = {}
  backwards = set()
  for p, c in enumerate(coords):
    varying = [d for d in range(idx.ndim) if idx.shape[d] > 1 and np.any(np.diff(c, axis=d) != 0)]
    if shape[p] == 1:
      continue  # matched with a leftover size-1 axis below
    if len(varying) != 1 or idx.shape[varying[0]] != shape[p]:
      return None
    d = varying[0]
    line = _line(c, d)
    if np.array_equal(line, np.arange(shape[p])):
      pass
    elif np.array_equal(line, np.arange(shape[p])[::-1]):
      backwards.add(d)
    else:
      return None
    axis_of[d] = p
  free_kernel = [d for d in range(idx.ndim) if d not in axis_of]
  free_param = [p for p in range(len(shape)) if p not in axis_of.values()]
  if any(idx.shape[d] != 1 for d in free_kernel) or len(free_kernel) != len(free_param):
    return None
  axis_of.update(zip(free_kernel, free_param))
  param = np.empty(idx.size, value.dtype)
  param[idx.ravel()] = value.ravel()
  if len(set(idx.ravel().tolist())) != idx.size:
    return None
  return KernelView(path, param.reshape(shape), tuple(axis_of[d] for d in range(idx.ndim)), frozenset(backwards))
