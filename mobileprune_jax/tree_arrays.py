"""Pytrees (NNX states, optax states) ↔ flat ``{path: numpy array}`` dicts, for tensor files.

Paths use the library's one naming scheme (``groups.path_to_str``: ``"fc1/kernel"``,
``"opt_state/0/mu/fc1/kernel"``). PRNG key arrays are stored as their raw ``uint32`` key data
and re-wrapped with the implementation of the leaf they are restored into.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from mobileprune_jax.groups import path_to_str


class StateMismatchError(ValueError):
  """Stored arrays do not fit the tree they are restored into (missing, extra, shape or dtype)."""


def _is_key(x: Any) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_arrays(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
  """``{prefix + path: host array}`` for every leaf of ``tree``."""
  out = {}
  for path, leaf in jax.tree.flatten_with_path(tree)[0]:
    value = jax.random.key_data(leaf) if _is_key(leaf) else leaf
    out[prefix + path_to_str(path)] = host_array(value)
  return out


def count_entries(tree: Any) -> int:
  """Number of entries of all array leaves of ``tree``."""
  return sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(tree))


def host_array(value: Any) -> np.ndarray:
  """The whole array on this host: a local copy of a replicated array, a gather (a collective every process must
  call) of one sharded over several processes' devices."""
  if isinstance(value, jax.Array) and not value.is_fully_addressable and not value.is_fully_replicated:
    return np.asarray(multihost_utils.process_allgather(value, tiled=True))
  return np.asarray(jax.device_get(value))


def host_copy(tree: Any) -> Any:
  """``tree`` with every leaf copied to this host (``host_array``): numpy arrays, and PRNG key arrays re-wrapped from
  their key data (a key array has no numpy form). A collective when a leaf is sharded over processes."""
  def copy(leaf):
    if _is_key(leaf):
      return jax.random.wrap_key_data(np.array(host_array(jax.random.key_data(leaf))), impl=jax.random.key_impl(leaf))
    return np.array(host_array(leaf))

  return jax.tree.map(copy, tree)


def from_arrays(like: Any, arrays: dict[str, np.ndarray], prefix: str = "") -> Any:
  """A tree shaped like ``like`` whose leaves come from ``arrays[prefix + path]``.

  Raises:
    StateMismatchError: a leaf missing from ``arrays``, an array no leaf takes, or a shape /
      dtype that differs from ``like``'s.
  """
  flat, treedef = jax.tree.flatten_with_path(like)
  used, leaves = set(), []
  for path, leaf in flat:
    name = prefix + path_to_str(path)
    if name not in arrays:
      raise StateMismatchError(f"no stored array for {name!r}")
    value = arrays[name]
    target = jax.random.key_data(leaf) if _is_key(leaf) else leaf
    if tuple(value.shape) != tuple(np.shape(target)) or value.dtype != np.dtype(target.dtype):
      raise StateMismatchError(f"{name!r} is stored as {value.dtype}{list(value.shape)}, the model has "
                               f"{np.dtype(target.dtype)}{list(np.shape(target))}")
    leaves.append(jax.random.wrap_key_data(value, impl=jax.random.key_impl(leaf)) if _is_key(leaf)
                  else jnp.asarray(value))
    used.add(name)
  extra = sorted(k for k in arrays if k.startswith(prefix) and k not in used)
  if extra:
    raise StateMismatchError(f"stored arrays the model does not have: {extra[:3]}{' ...' if len(extra) > 3 else ''}")
  return jax.tree.unflatten(treedef, leaves)
