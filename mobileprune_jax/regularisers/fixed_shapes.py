"""Channels a model's code fixes the shape of: ``for_model`` keeps them out of the units when surgery must keep them.

A reshape, slice or split whose sizes the code writes as constants (``reshape(b, t, 4, 8)``, ``x[..., :8]``)
cannot be run on fewer channels, so ``surgery.shrink_with_report`` keeps every channel passing through such a
shape site (``Graph.shape_sites``) when cutting them does not rebuild an equal model. A penalty that treated
those channels as removable units would make zeros no surgery can use. Whether the code adapts (``reshape(n, -1)``
after a flatten, ``reshape(b, t, -1, head_dim)`` over whole heads) is found the way shrink finds it: one unit per
(op, producing layer) of the sites is zeroed in a copy of the model, which is then shrunk (units meeting in one op
in separate copies); if shrink has to keep the sites for any copy, so does the penalty (docs/coupled.md). A layer
whose kernel the code computes from its parameter (weight standardisation, spectral norm) makes its channels sites
too: there the probe also checks that the zeroed units were cut, since zeros in the parameter need not be zeros of
the kernel applied.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax import units as units_lib
from mobileprune_jax.surgery.shrink import shrink_with_report, unsynced_sites, variables_by_path

__all__ = ["describe", "pin_fixed_shapes", "probe_batches", "probe_roots", "warning"]


def pin_fixed_shapes(model: nnx.Module, sample_input: Any, graph: Any,
                     shapes: Mapping[str, tuple[int, ...]]) -> tuple[Any, dict[int, str], str]:
  """``graph`` with its shape-site channels pinned when surgery must keep them, those sites (node -> op), and why
  when the probe's shrink itself failed ("" otherwise).

  Args:
    model: the traced model (not modified).
    sample_input: its sample input (as for ``Regulariser.for_model``).
    graph: its trace (``surgery.depgraph.trace``); returned unchanged when the sites adapt or there are none.
    shapes: the shape of every parameter by path.
  """
  sites = unsynced_sites(model, graph.shape_sites)
  if not sites:
    return graph, {}, ""
  readers = units_lib.units_from_graph(graph, shapes, sorted({layer.kernel_path for layer in graph.layers}))
  chosen = probe_roots(graph, sites, readers.roots)
  if not chosen:  # no site channel is a removable unit: nothing to decide
    return graph, {}, ""
  computed = {graph.find(node) for node, op in sites.items() if op.startswith("computed kernel")}
  for batch in probe_batches(graph, chosen, readers.roots):
    probe = nnx.clone(model)
    variables = variables_by_path(probe)
    for i in batch:
      for path, flat in readers.units[i].items():
        value = np.array(variables[path].get_value())
        value.reshape(-1)[flat] = 0
        variables[path].set_value(jnp.asarray(value, variables[path].get_value().dtype))
    try:
      _, report = shrink_with_report(probe, sample_input, check=False)
    except Exception as e:  # shrink fails on the cut copy: no surgery removes these channels, so no unit holds them
      failure = f"shrinking a copy with one of them zeroed failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
      break
    if report.kept_shape_sites or not all(entries_cut(report.cuts, readers.units[i], shapes) for i in batch
                                          if readers.roots[i] in computed):
      failure = ""  # kept, or a computed kernel's zeros are not the zeros of the kernel it applies
      break
  else:
    return graph, {}, ""
  return dataclasses.replace(graph, pinned=set(graph.pinned) | set(sites)), sites, failure


def entries_cut(cuts: Mapping[str, Sequence[tuple[int, Sequence[int]]]], unit: Mapping[str, np.ndarray],
                shapes: Mapping[str, tuple[int, ...]]) -> bool:
  """Whether ``cuts`` (a shrink plan: path -> [(axis, kept indices)]) drops every entry of ``unit`` (path -> flat
  indices): an entry goes when its index along some cut axis is not kept."""
  for path, flat in unit.items():
    coords = np.unravel_index(np.asarray(flat, np.int64), shapes[path])
    dropped = np.zeros(len(coords[0]) if coords else 0, bool)
    for axis, keep in cuts.get(path, []):
      dropped |= ~np.isin(coords[axis], np.asarray(keep, np.int64))
    if not dropped.all():
      return False
  return True


def probe_batches(graph: Any, chosen: Sequence[int], roots: Sequence[int]) -> list[list[int]]:
  """The chosen units in batches zeroed together, no two of a batch meeting in one op's shape site: there, cuts that
  only fit together (one from each half of a channel shuffle) would pass for removable, while units of separate
  ops (each block's head reshape) are judged in one shrink."""
  groups_of: dict[int, set[int]] = {}
  for g, nodes in enumerate(graph.shape_site_groups):
    for root in {graph.find(int(n)) for n in nodes}:
      groups_of.setdefault(root, set()).add(g)
  batches: list[tuple[list[int], set[int]]] = []
  for i in chosen:
    mine = groups_of.get(roots[i], set())
    for batch, taken in batches:
      if not mine & taken:
        batch.append(i)
        taken |= mine
        break
    else:
      batches.append(([i], set(mine)))
  return [batch for batch, _ in batches]


def probe_roots(graph: Any, sites: Mapping[int, str], roots: Sequence[int]) -> list[int]:
  """Indices (into ``roots``) of one removable unit per (op, producing layer) of the shape sites, the first in order."""
  unit_of = {root: i for i, root in enumerate(roots)}
  chosen: dict[tuple[str, Any], int] = {}
  for node in sorted(sites):
    i = unit_of.get(graph.find(node))
    if i is not None:
      chosen.setdefault((sites[node], graph.node_layer.get(node)), i)
  return sorted(set(chosen.values()))


def _kind(op: str) -> str:
  return "grouped conv" if op.startswith("grouped conv") else (
      "kernel computed from parameters" if op.startswith("computed kernel") else op)


def describe(sites: Mapping[int, str]) -> str:
  """The kinds of op among ``sites``: "reshape", "slice", "grouped conv", "kernel computed from parameters", ...
  joined by " / "."""
  return " / ".join(sorted({_kind(op) for op in sites.values()}))


def warning(name: str, sites: Mapping[int, str], failure: str) -> str:
  """``for_model``'s one line about the channels ``pin_fixed_shapes`` kept out of the units."""
  head = f"{name}.for_model: {len(sites)} channel(s) pass through a {describe(sites)}"
  if failure:
    return f"{head}, and {failure}; they are not removable units"
  fixed = (" whose shape the model's code fixes (a size, bound or group count written as a constant); surgery keeps "
           "them, so they are not removable units (compute the size from the input's shape, e.g. -1, to let them go)")
  computed = sorted({op.split()[-1] for op in sites.values() if op.startswith("computed kernel")})
  if not computed:
    return head + fixed
  why = (f"zeros in {', '.join(computed[:3])} are not zeros of the kernel the layer applies, which the model computes "
         "from it by more than entry-by-entry ops (weight standardisation, spectral or weight norm)")
  if all(op.startswith("computed kernel") for op in sites.values()):
    return f"{head}; surgery keeps them, so they are not removable units: {why}"
  return f"{head}{fixed}; and {why}"
