"""Control flow in the channel trace: ``lax.scan`` (a recurrent layer: ``nnx.RNN`` over an LSTM / GRU / simple
cell), ``lax.while_loop`` (its body like a scan's) and ``lax.cond`` / ``lax.switch`` (every branch is traced:
either may run).

The body runs once on the trace's abstract values: its layers are found like any other, the scanned inputs enter
as one step (their nodes must not change along the scanned axis), and each carry enters as fresh nodes joined,
element by element, with its initial value's nodes and with the body's new carry (a recurrent state is one set of
channels at every step). Values in the loop are unknown (they change from step to step), except the carries'
entries that stay exactly zero: the initial zeros are assumed to stay, the body is run, and where a step makes one
non-zero the run is undone and tried again without it (so a hidden unit whose filters are all zero is found dead). Layers stacked along the
scanned axis (``nnx.scan`` over blocks made by ``nnx.vmap``) get other weights at every step: those scans are left
to the caller (the tracer treats them as opaque).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from mobileprune_jax.surgery.graph import NO_NODE
from mobileprune_jax.surgery.values import Act, Const


def scan(tracer: Any, eqn: Any, ins: list[Any]) -> list[Any] | None:
  """The outputs of a scan (final carries, stacked outputs), or None when it scans over weights or nodes vary
  along the scanned axis."""
  params = eqn.params
  n_consts, n_carry = params["num_consts"], params["num_carry"]
  consts, inits, xs = ins[:n_consts], ins[n_consts:n_consts + n_carry], ins[n_consts + n_carry:]
  if any(isinstance(x, Const) and x.origin for x in xs) or params["length"] == 0:  # weights scanned over: a
    return None  # different layer per step (or no step at all)
  steps = []
  for x, var in zip(xs, eqn.invars[n_consts + n_carry:]):
    shape = tuple(var.aval.shape)
    act = tracer.as_act(x, shape)
    if not np.all(act.ids == act.ids[:1]):
      return None
    # one step's slice: its nodes, and zero where every step is (a dead channel stays dead); 0-d stays 0-d
    steps.append(Act.of_zero(np.asarray(act.ids[0], order="C"), np.all(act.zero, axis=0)))
  carries, outs, zero = _carry(tracer, eqn.params["jaxpr"], consts, inits, steps)
  results = _final_carries(tracer, carries, outs[:n_carry], zero)
  for out, var in zip(outs[n_carry:], eqn.outvars[n_carry:]):
    shape = tuple(var.aval.shape)
    act = tracer.as_act(out, shape[1:])
    results.append(Act(np.ascontiguousarray(np.broadcast_to(act.ids, shape)),
                       np.broadcast_to(np.where(act.zero, 0.0, np.nan), shape).copy()))
  return results


def while_loop(tracer: Any, eqn: Any, ins: list[Any]) -> list[Any]:
  """The final carries of a ``while_loop`` (a ``fori_loop`` with traced bounds): the body is traced like a scan's,
  and the condition too, on the carries (a convergence test over the channels keeps them)."""
  params = eqn.params
  n_cond, n_body = params["cond_nconsts"], params["body_nconsts"]
  cond_consts, body_consts, inits = ins[:n_cond], ins[n_cond:n_cond + n_body], ins[n_cond + n_body:]
  carries, outs, zero = _carry(tracer, params["body_jaxpr"], body_consts, inits, [])
  results = _final_carries(tracer, carries, outs, zero)
  cond_jaxpr = params["cond_jaxpr"]
  tracer.run(cond_jaxpr.jaxpr, cond_jaxpr.consts, list(cond_consts) + results)
  return results


def _carry(tracer: Any, body: Any, consts: list[Any], inits: list[Any], steps: list[Act]):
  """Traces a loop body once on fresh carry nodes; returns (carries, body outputs, each carry's exact zeros).

  A carry's initial zeros are assumed to stay zero; where a step makes one non-zero, the trace of the body is
  undone (its layers saw false zeros) and redone without it.
  """
  zero = [_zero_of(init) for init in inits]
  while True:
    assumed = any(z.any() for z in zero)
    snapshot = copy.deepcopy(tracer.__dict__) if assumed else None
    carries, outs = _run_body(tracer, body, consts, inits, steps, zero)
    new_zero = [tracer.as_act(out, z.shape).zero for out, z in zip(outs[:len(inits)], zero)]
    if not assumed or all(np.all(nz[z]) for nz, z in zip(new_zero, zero)):
      return carries, outs, zero
    tracer.__dict__.update(snapshot)
    zero = [z & nz for z, nz in zip(zero, new_zero)]


def _final_carries(tracer: Any, carries: list[Act], outs: list[Any], zero: list[np.ndarray]) -> list[Act]:
  """Each carry's nodes joined with the body's new value (one set of channels at every step), exact zeros kept."""
  results = []
  for carry, out, z in zip(carries, outs, zero):
    new = tracer.as_act(out, carry.ids.shape)
    tracer.union(carry.ids, new.ids)
    tracer.pin(carry.ids[new.ids < 0], "a recurrent state that a step sets from constants is kept")
    results.append(Act(carry.ids, np.where(z, 0.0, np.nan)))
  return results


def _zero_of(init: Any) -> np.ndarray:
  """Entries of a carry's initial value that are exactly zero for every input."""
  if isinstance(init, Act):
    return np.array(init.zero)
  return np.asarray(init.value) == 0


def _run_body(tracer: Any, body: Any, consts: list[Any], inits: list[Any], steps: list[Act],
              zero: list[np.ndarray]) -> tuple[list[Act], list[Any]]:
  """Runs the body once on fresh carry nodes (joined with their initial values' nodes), zero where ``zero``."""
  carries = []
  for init, z in zip(inits, zero):
    nodes = tracer.new_nodes(int(np.prod(z.shape, dtype=np.int64))).reshape(z.shape)
    if isinstance(init, Act):
      tracer.union(nodes, init.ids)
    else:  # an initial state the code makes (zeros of the cell's width): its size is in the code
      tracer.shape_site_groups.append(nodes.ravel())
      for node in nodes.ravel().tolist():
        tracer.shape_sites.setdefault(int(node), "scan carry")
    carries.append(Act(nodes, np.where(z, 0.0, np.nan)))
  return carries, tracer.run(body.jaxpr, body.consts, list(consts) + carries + steps)


def cond(tracer: Any, eqn: Any, ins: list[Any]) -> list[Any]:
  """The outputs of a ``cond`` / ``switch``: each branch is traced on the operands (its layers are found like any
  others), and an output's channels in one branch are joined with its channels in the others, element by element,
  like the cases of a select. Channels meeting, in another branch, a value with no channel that is not zero stay."""
  branches = eqn.params["branches"]
  outs = [tracer.run(b.jaxpr, b.consts, ins[1:]) for b in branches]
  results = []
  for var, alternatives in zip(eqn.outvars, zip(*outs)):
    shape = tuple(var.aval.shape)
    if all(isinstance(a, Const) for a in alternatives):
      first = np.asarray(alternatives[0].value)
      same = all(np.array_equal(np.asarray(a.value), first) for a in alternatives[1:])
      results.append(alternatives[0] if same else Act(np.full(shape, NO_NODE, np.int64), np.full(shape, np.nan)))
      continue
    cases = [tracer.as_act(a, shape) for a in alternatives]
    acts = [c for a, c in zip(alternatives, cases) if isinstance(a, Act)]
    results.append(tracer.join_cases(cases, acts, cases))
  return results
