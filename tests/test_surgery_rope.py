"""A Llama-style attention block: RoPE's sin/cos tables (arrays the code computes, varying over head_dim) and
grouped-query attention. Whole heads keep every head_dim entry, so the tables never stop heads from going; a
table that varies along the channels cut still keeps them. Widths by hand; outputs against the unpruned model's."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax import surgery

D, HEADS, KV_HEADS, HEAD_DIM = 16, 4, 2, 8


def rope(x):
  """Rotary position embedding of (b, t, heads, head_dim), tables computed from the shapes (no parameters)."""
  t, half = x.shape[1], x.shape[-1] // 2
  angle = jnp.arange(t)[:, None] / (10000 ** (jnp.arange(half) / half))[None]
  sin, cos = jnp.sin(angle)[None, :, None], jnp.cos(angle)[None, :, None]
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class GQABlock(nnx.Module):
  def __init__(self, rngs, channel_table=False):
    self.channel_table = channel_table
    self.q = nnx.Linear(D, HEADS * HEAD_DIM, use_bias=False, rngs=rngs)
    self.k = nnx.Linear(D, KV_HEADS * HEAD_DIM, use_bias=False, rngs=rngs)
    self.v = nnx.Linear(D, KV_HEADS * HEAD_DIM, use_bias=False, rngs=rngs)
    self.o = nnx.Linear(HEADS * HEAD_DIM, D, use_bias=False, rngs=rngs)

  def __call__(self, x):
    b, t, _ = x.shape
    q, k = rope(self.q(x).reshape(b, t, -1, HEAD_DIM)), rope(self.k(x).reshape(b, t, -1, HEAD_DIM))
    v = self.v(x).reshape(b, t, -1, HEAD_DIM)
    if self.channel_table:  # one fixed number per (head, entry): cutting a head would need a shorter table
      q = q * jnp.asarray(np.linspace(0.5, 1.5, HEADS * HEAD_DIM).reshape(HEADS, HEAD_DIM), jnp.float32)
    rep = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, rep, axis=2), jnp.repeat(v, rep, axis=2)
    logits = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(HEAD_DIM)
    out = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, -1), v)
    return x + self.o(out.reshape(b, t, -1))


def _unread_kv_group(model):
  model.o.kernel[...] = model.o.kernel[...].at[2 * HEAD_DIM:4 * HEAD_DIM].set(0)  # q heads 2, 3 share kv head 1


def test_heads_go_whole_through_rope_and_grouped_query_attention():
  model = GQABlock(nnx.Rngs(0))
  _unread_kv_group(model)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, D)), jnp.float32)
  small = surgery.shrink(model, x)
  assert small.q.kernel.shape == (D, 2 * HEAD_DIM) and small.o.kernel.shape == (2 * HEAD_DIM, D)
  assert small.k.kernel.shape == small.v.kernel.shape == (D, HEAD_DIM)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-5)


def test_a_table_over_the_cut_channels_keeps_them():
  model = GQABlock(nnx.Rngs(0), channel_table=True)
  _unread_kv_group(model)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, D)), jnp.float32)
  small, report = surgery.shrink_with_report(model, x)
  assert small.q.kernel.shape == (D, HEADS * HEAD_DIM) and small.k.kernel.shape == (D, KV_HEADS * HEAD_DIM)
  assert any("array written into the code" in note for note in report.notes)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-6)
