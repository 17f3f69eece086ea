"""Does a rebuilt model compute what the original did: outputs compared on the sample input and random inputs."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax.surgery import depgraph


def _random_like(x: jax.Array, rng: np.random.Generator) -> jax.Array:
  """Normal noise for a float input; for an integer or boolean one (token ids, masks) the sample's own
  values reshuffled, so that indices stay valid."""
  if jnp.issubdtype(x.dtype, jnp.inexact):
    return jnp.asarray(rng.normal(size=x.shape), x.dtype)
  return jnp.asarray(rng.permutation(np.asarray(x).ravel()).reshape(x.shape), x.dtype)


def max_output_diff(a: nnx.Module, b: nnx.Module, sample_input: Any, n: int = 4, seed: int = 0) -> float:
  """max |a(x) − b(x)| in inference mode over the sample input and random inputs of its shape.

  NaN if either output has a NaN where the other does not agree (NaN is never "equal"), inf
  if the outputs' shapes differ.
  """
  return output_diff_and_scale(a, b, sample_input, n, seed)[0]


def output_diff_and_scale(a: nnx.Module, b: nnx.Module, sample_input: Any, n: int = 4,
                          seed: int = 0) -> tuple[float, float]:
  """(``max_output_diff``, max |a(x)| over the same inputs): the difference and the scale it is judged against."""
  x0, rebuild = depgraph.call_arguments(sample_input)
  rng = np.random.default_rng(seed)
  xs = [x0] + [[_random_like(x, rng) for x in x0] for _ in range(n)]
  fa, fb = depgraph.eval_mode(a), depgraph.eval_mode(b)

  def call(model, x):
    args, kwargs = rebuild(x)
    return model(*args, **depgraph.inference_kwargs(model, args, kwargs))

  forward = nnx.jit(call)
  worst, scale = 0.0, 0.0
  for x in xs:
    ya, yb = jax.tree.leaves(forward(fa, x)), jax.tree.leaves(forward(fb, x))
    if len(ya) != len(yb) or any(np.shape(u) != np.shape(v) for u, v in zip(ya, yb)):
      return float("inf"), scale
    for u, v in zip(ya, yb):
      diff = float(jnp.max(jnp.abs(u.astype(jnp.float32) - v.astype(jnp.float32))))
      worst = diff if math.isnan(diff) else max(worst, diff)  # a NaN anywhere is a mismatch, never dropped
      if math.isnan(worst):
        return worst, scale
      scale = max(scale, float(jnp.max(jnp.abs(u.astype(jnp.float32)), initial=0.0)))
  return worst, scale


ULPS = 4  # a model computing in a float type coarser than float32 is compared within ULPS of its epsilon


def coarsest_float(model: nnx.Module, sample_input: Any) -> jnp.dtype:
  """The least precise floating dtype among the values ``model``'s forward pass computes (float32 if none is
  coarser): a bfloat16 or float16 layer rounds its outputs, so cutting zero channels (sums in another order) may
  move an output by an ulp of that type."""
  x0, rebuild = depgraph.call_arguments(sample_input)
  _, leaves, _, f = depgraph.forward_fn(model)  # functional: a model that updates its statistics traces too

  def call(x):
    args, kwargs = rebuild(x)
    return f(leaves, *args, **kwargs)

  coarsest = jnp.dtype(jnp.float32)

  def visit(jaxpr) -> None:
    nonlocal coarsest
    for eqn in jaxpr.eqns:
      for var in eqn.outvars:
        dtype = getattr(var.aval, "dtype", None)
        if dtype is not None and jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).eps > jnp.finfo(coarsest).eps:
          coarsest = jnp.dtype(dtype)
      for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
          inner = getattr(sub, "jaxpr", sub)
          if hasattr(inner, "eqns"):
            visit(inner)

  visit(jax.make_jaxpr(call)([x[:1] for x in x0]).jaxpr)
  return coarsest


def parity_failure(model: nnx.Module, new: nnx.Module, sample_input: Any, atol: float,
                    report: Any) -> RuntimeError | None:
  """None if ``new`` reproduces ``model``'s outputs within atol·max(1, max |y|) (and sets
  ``report.max_abs_diff``), else the error to raise: the difference, or the exception running ``new`` raised.
  A model computing in bfloat16 or float16 is compared within max(atol, ``ULPS``·eps of that type) instead
  (bfloat16: 0.031), since its rounding alone moves outputs by about an ulp when sums run over fewer channels."""
  try:
    report.max_abs_diff, scale = output_diff_and_scale(model, new, sample_input)
  except Exception as e:  # the model's code could not run on the cut arrays (e.g. a reshape to fixed sizes)
    return RuntimeError(f"the shrunk model does not run: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                        f"\n{report}")
  if report.max_abs_diff <= atol * max(1.0, scale):
    return None
  coarse = coarsest_float(model, sample_input)
  tol = max(atol, ULPS * float(jnp.finfo(coarse).eps)) if coarse != jnp.float32 else atol
  if report.max_abs_diff <= tol * max(1.0, scale):
    return None
  widened = f" ({ULPS} ulps of {coarse.name}, the coarsest type it computes in)" if tol != atol else ""
  return RuntimeError(f"shrunk model differs from the original by {report.max_abs_diff:.3g} > {tol:.3g}{widened} · "
                      f"max(1, {scale:.3g}) (outputs up to {scale:.3g}):\n{report}")
