"""Checks and dtype handling shared by the operators (internal).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def check_nonnegative(name: str, value: ArrayLike) -> None:
  """Raises ValueError if a concrete coefficient has a negative (or NaN) entry."""
  if isinstance(value, jax.core.Tracer):
    return
  arr = np.asarray(value)
  if not np.issubdtype(arr.dtype, np.number):
    raise TypeError(f"coefficient {name!r} must be numeric, got {arr.dtype}")
  if np.any(np.isnan(arr)) or np.any(arr < 0):
    raise ValueError(f"coefficient {name!r} must be non-negative, got {value!r}")


def check_float(y: ArrayLike, min_ndim: int, fn: str) -> Array:
  y = jnp.asarray(y)
  if not jnp.issubdtype(y.dtype, jnp.floating):
    raise TypeError(f"{fn}: y must have a floating dtype, got {y.dtype}")
  if y.ndim < min_ndim:
    raise ValueError(f"{fn}: y must have at least {min_ndim} dimension(s), got shape {y.shape}")
  return y


def compute_dtype(dtype) -> jnp.dtype:
  """float16/bfloat16 are computed in float32; float32/float64 as they are."""
  return jnp.promote_types(dtype, jnp.float32)


def coef(c: ArrayLike, dtype, batch_shape: tuple[int, ...], fn: str, name: str) -> Array:
  """Broadcasts a per-group coefficient to ``batch_shape``, with a clear error."""
  c = jnp.asarray(c, dtype)
  try:
    return jnp.broadcast_to(c, batch_shape)
  except ValueError:
    raise ValueError(
        f"{fn}: coefficient {name!r} of shape {c.shape} does not broadcast against the "
        f"group shape {batch_shape}"
    ) from None


def checked(*names: str) -> Callable:
  """Decorator: validates coefficient arguments eagerly, then calls the jitted function."""

  def wrap(fn):
    jitted = jax.jit(fn)

    @functools.wraps(fn)
    def call(y, *coefs):
      if len(coefs) != len(names):
        raise TypeError(f"{fn.__name__}() takes y and {len(names)} coefficient(s) {names}")
      for name, c in zip(names, coefs):
        check_nonnegative(name, c)
      return jitted(y, *coefs)

    return call

  return wrap
