"""PALM (Bolte–Sabach–Teboulle) for MobilePrune's pruning phase, docs/algorithms.md §B.

Per mini-batch, for each layer block l in forward order (Gauss–Seidel: the gradient is taken
after the earlier blocks were updated):

    g = ∇_l loss(W);  L = 1   (warm start: L = max(1, L_l⁻/γ²), L_l⁻ the block's L accepted at the previous step)
    repeat ≤ max_backtracks times:
        s = 1/(γ·L);  W_l⁺ = prox_{s·R_l}(W_l − s·g)
        accept if loss(W⁺) ≤ loss(W) + ⟨g, W_l⁺ − W_l⟩ + L/2·‖W_l⁺ − W_l‖²   else L ← γ·L

A block is a layer's kernel and bias; the prox is the regulariser's (``Regulariser.prox_leaves``) at
step s (π on dense kernels, θ on conv kernels for MobilePrune). With coupled units
(``Regulariser.for_model``) the layers a unit spans form one block (``Regulariser.blocks``): the
penalty is then separable across blocks, so each block's prox is exact. There is no learning rate.
Parameters in no block (normalisation scales and biases, layers the trace cannot see, such as those
inside a scan) are held fixed by PALM; the retraining phases train them.

The papers' code restarts L at 1 for every block and mini-batch. On a trained LeNet-5 the accepted
L is 5-60, so each block tries log_γ L ≈ 18-43 candidates (a prox and a forward pass each) and a
PALM step costs ~10 prox-SGD steps. ``warm_start=True`` starts each block's search two γ-steps below
the L it accepted at the previous mini-batch (never below 1): the accepted L are the same grid
γᵏ, a block whose L holds still tries three candidates, and L may fall by γ² per step when the
landscape flattens (it rises as far as needed at once). It changes which steps are taken (a
deviation from the papers' solver, off by default); its state, one L per block, is checkpointed.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mobileprune_jax import groups
from mobileprune_jax.regularisers import Regulariser
from mobileprune_jax.train.steps import cross_entropy, forward


def layer_blocks(param_paths: Sequence[str], kernel_paths: Sequence[str]) -> list[list[int]]:
  """Leaf indices of each layer block (kernel + sibling bias), in the order of kernel_paths (a kernel several layers
  use, listed once per use, is one block at its first use)."""
  index = {p: i for i, p in enumerate(param_paths)}
  blocks = []
  for kernel in dict.fromkeys(kernel_paths):
    parent = kernel.rpartition("/")[0]
    block = [index[kernel]]
    bias = f"{parent}/bias" if parent else "bias"
    if bias in index:
      block.append(index[bias])
    blocks.append(block)
  return blocks


WARM_DROP = 2  # warm start: a block's search starts γ^WARM_DROP below the L it accepted at the previous step


class PalmStep:
  """``step(model, x, y, multiplier=1.0) -> (loss, mean L)``: one PALM sweep over the layer blocks, in place.

  ``multiplier`` scales every coefficient of the regulariser (an array argument: changing it does
  not recompile). ``items()`` / ``restore()``: what a checkpoint must hold to continue (the blocks'
  accepted L under ``warm_start``; nothing otherwise).
  """

  def __init__(self, sweep, treedef, num_blocks: int, gamma: float, warm_start: bool):
    self._sweep, self._treedef, self._gamma, self.warm_start = sweep, treedef, gamma, warm_start
    self.lipschitz = jnp.ones((num_blocks,), jnp.float32)  # each block's L accepted at the previous step
    self._ones = self.lipschitz  # the papers' start, placed like the params at the first call

  def __call__(self, model: nnx.Module, x, y, multiplier=1.0):
    _, params, rest = nnx.split(model, nnx.Param, ...)
    leaves = jax.tree.leaves(params)
    if self.warm_start:  # the previous step's L came out of the sweep placed like the params, a restored one not
      start = jax.device_put(jnp.maximum(self.lipschitz / self._gamma ** WARM_DROP, 1.0), leaves[0].sharding)
    else:
      start = self._ones = jax.device_put(self._ones, leaves[0].sharding)  # a no-op after the first call
    new_leaves, loss, lips = self._sweep(leaves, rest, x, y, jnp.asarray(multiplier, jnp.float32), start)
    nnx.update(model, jax.tree.unflatten(self._treedef, new_leaves))
    self.lipschitz = lips
    return loss, jnp.mean(lips)

  def items(self) -> dict:
    return {"palm": {"lipschitz": self.lipschitz}} if self.warm_start else {}

  def restore(self, trees: dict) -> None:
    if self.warm_start:
      self.lipschitz = jnp.asarray(trees["palm"]["lipschitz"], jnp.float32)


def make_palm_step(model: nnx.Module, regulariser: Regulariser, kernel_paths: Sequence[str],
                   gamma: float = 1.1, max_backtracks: int = 100, warm_start: bool = False) -> PalmStep:
  """The PALM sweep of ``model`` under ``regulariser`` (a ``PalmStep``; see the module docstring)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  flat, treedef = jax.tree.flatten_with_path(params)
  paths = [groups.path_to_str(p) for p, _ in flat]
  roles = regulariser.roles(params)
  index = {p: i for i, p in enumerate(paths)}
  blocks = [[index[p] for p in block] for block in
            regulariser.blocks([[paths[i] for i in block] for block in layer_blocks(paths, kernel_paths)])]

  def loss_of(leaves, rest, x, y):
    m = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves), rest)
    return cross_entropy(forward(m, x, training=True), y)

  @jax.jit
  def step(leaves, rest, x, y, multiplier, lip_start):
    leaves = list(leaves)
    l_values = []
    for b, block in enumerate(blocks):
      block_roles = [roles[i] for i in block]
      block_paths = [paths[i] for i in block]

      def block_loss(bl, leaves=leaves, block=block):
        full = list(leaves)
        for i, v in zip(block, bl):
          full[i] = v
        return loss_of(full, rest, x, y)

      current = [leaves[i] for i in block]
      f0, g = jax.value_and_grad(block_loss)(current)

      def candidate(lip, current=current, g=g, f0=f0, block_roles=block_roles, block_loss=block_loss,
                    block_paths=block_paths):
        s = 1.0 / (gamma * lip)
        moved = [c - s * gi for c, gi in zip(current, g)]
        new = regulariser.prox_leaves(block_roles, moved, s, multiplier=multiplier, paths=block_paths)
        d = [n - c for n, c in zip(new, current)]
        bound = f0 + sum(jnp.vdot(gi, di) for gi, di in zip(g, d)) + 0.5 * lip * sum(jnp.vdot(di, di) for di in d)
        f_new = block_loss(new)
        return new, f_new <= bound, f_new

      def cond(state):
        lip, _, ok, it, _ = state
        return (~ok) & (it < max_backtracks)

      def body(state, candidate=candidate):
        lip, _, _, it, _ = state
        lip = lip * gamma
        new, ok, f_new = candidate(lip)
        return lip, new, ok, it + 1, f_new

      lip0 = lip_start[b]
      new0, ok0, f0_new = candidate(lip0)
      lip, new, _, _, loss = jax.lax.while_loop(cond, body, (lip0, new0, ok0, jnp.asarray(0), f0_new))
      for i, v in zip(block, new):
        leaves[i] = v
      l_values.append(lip)
    return leaves, loss, jnp.stack(l_values)  # the loss after the last block's update: the sweep's

  return PalmStep(step, treedef, len(blocks), gamma, warm_start)
