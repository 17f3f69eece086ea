"""Kernels the model computes from its parameters by more than entry-by-entry ops, and scans over plain arrays.

Weight standardisation ((w − mean w) / std w, BiT's StdConv), spectral norm (w / σ(w, u)) and a merged low-rank
update (w + a·b) apply a kernel whose entries change when a slice of w is cut, or that needs other variables cut
with it. Surgery must then keep what it cannot cut exactly (the reference is always the unpruned model's output),
and ``for_model`` must not present units whose zeros are not zeros of the applied kernel.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax import regularisers, surgery
from mobileprune_jax.regularisers.fixed_shapes import entries_cut


class StdConv(nnx.Conv):
  """A weight-standardised conv (BiT): each filter is standardised over its taps and input channels."""

  def __call__(self, x):
    w = self.kernel[...]
    w = (w - w.mean((0, 1, 2), keepdims=True)) / jnp.sqrt(w.var((0, 1, 2), keepdims=True) + 1e-5)
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + self.bias[...]


class StdNet(nnx.Module):
  def __init__(self, rngs):
    self.c1 = StdConv(3, 8, (3, 3), rngs=rngs)
    self.c2 = StdConv(8, 6, (3, 3), rngs=rngs)
    self.head = nnx.Linear(6, 4, rngs=rngs)

  def __call__(self, x):
    return self.head(nnx.relu(self.c2(nnx.relu(self.c1(x)))).mean((1, 2)))


def _image():
  return jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 3)), jnp.float32)


def _max_diff(a, b, x):
  return float(jnp.max(jnp.abs(a(x) - b(x))))


def test_a_dead_channel_into_a_standardised_kernel_is_kept_not_cut_wrongly():
  # c1's filter 3 and bias 3 are zero, so channel 3 is dead; cutting c2's input slice 3 would change c2's mean and
  # std over its inputs, so the model would differ (by 8.7 on such a net before, with check=False)
  model = StdNet(nnx.Rngs(0))
  model.c1.kernel[...] = model.c1.kernel[...].at[..., 3].set(0)
  model.c1.bias[...] = model.c1.bias[...].at[3].set(0)
  x = _image()
  for check in (False, True):
    small, report = surgery.shrink_with_report(model, x, check=check)
    assert _max_diff(small, model, x) < 1e-4
    assert any("computed kernel" in note for note in report.notes), report.notes
  assert report.params_after == report.params_before


def test_the_outputs_of_the_last_standardised_kernel_are_cut_when_that_is_exact():
  # the head's input row 2 is zero: c2's filter 2 is read by nothing. Each filter is standardised on its own, so
  # dropping it leaves the others as they were: 3·3·8 + 1 (filter, bias) + 4 (the head's row) entries go
  model = StdNet(nnx.Rngs(0))
  model.head.kernel[...] = model.head.kernel[...].at[2].set(0)
  x = _image()
  small, report = surgery.shrink_with_report(model, x)
  assert report.params_before - report.params_after == 3 * 3 * 8 + 1 + 4
  assert small.c2.kernel.shape == (3, 3, 8, 5)
  assert _max_diff(small, model, x) < 1e-4


def test_for_model_presents_no_unit_of_a_standardised_kernel():
  model = StdNet(nnx.Rngs(0))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    reg = regularisers.group_lasso(neuron=0.1, channel=0.1).for_model(model, _image())
  messages = [str(w.message) for w in caught]
  assert any("not zeros of the kernel the layer applies" in m and "c1/kernel" in m for m in messages), messages
  held = {path for unit in reg.units.units for path in unit}
  assert not held & {"c1/kernel", "c2/kernel"}, held


class SpectralNet(nnx.Module):
  def __init__(self, rngs):
    self.a = nnx.SpectralNorm(nnx.Linear(6, 8, rngs=rngs), rngs=rngs)
    self.b = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    return self.b(nnx.relu(self.a(x, update_stats=False)))


def test_spectral_norm_is_traced_and_its_power_iteration_vector_never_goes_out_of_step():
  # the trace used to fail ("select cases must have the same shapes"): a (1, 1) constant squeezed to a scalar came
  # out 1-d. Its filter 5 is zero, but cutting it would leave the power-iteration vector u at 8 entries
  model = SpectralNet(nnx.Rngs(0))
  inner = model.a.layer_instance
  inner.kernel[...] = inner.kernel[...].at[:, 5].set(0)
  inner.bias[...] = inner.bias[...].at[5].set(0)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6)), jnp.float32)
  small, report = surgery.shrink_with_report(model, x)
  assert _max_diff(small, model, x) < 1e-5
  assert report.params_after == report.params_before


class MergedLowRank(nnx.Module):
  """A dense layer whose kernel is w + a·b (a merged low-rank update)."""

  def __init__(self, rngs):
    self.w = nnx.Param(jax.random.normal(jax.random.key(0), (5, 7)) * 0.3)
    self.a = nnx.Param(jax.random.normal(jax.random.key(1), (5, 2)) * 0.3)
    self.b = nnx.Param(jax.random.normal(jax.random.key(2), (2, 7)) * 0.3)
    self.out = nnx.Linear(7, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(x @ (self.w[...] + self.a[...] @ self.b[...])))


def test_a_kernel_plus_a_low_rank_product_keeps_the_channels_the_product_fills():
  # column 4 of w and of b is zero, so the applied kernel's column 4 is zero; cutting w's column alone made a shrunk
  # model that does not run (a·b still has 7 columns)
  model = MergedLowRank(nnx.Rngs(0))
  model.w[...] = model.w[...].at[:, 4].set(0)
  model.b[...] = model.b[...].at[:, 4].set(0)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 5)), jnp.float32)
  small, _ = surgery.shrink_with_report(model, x)
  assert _max_diff(small, model, x) < 1e-5


class ScaledKernel(nnx.Module):
  """An equalised-learning-rate layer: the kernel times a constant, entry by entry: still a plain kernel."""

  def __init__(self, rngs):
    self.w = nnx.Param(jax.random.normal(jax.random.key(0), (5, 7)))
    self.out = nnx.Linear(7, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(x @ (self.w[...] / np.sqrt(5.0)).astype(jnp.bfloat16).astype(jnp.float32)))


def test_a_kernel_scaled_by_a_constant_is_still_cut():
  model = ScaledKernel(nnx.Rngs(0))
  model.w[...] = model.w[...].at[:, 4].set(0)
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 5)), jnp.float32)
  small, report = surgery.shrink_with_report(model, x)
  assert report.params_before - report.params_after == 5 + 3  # w's column 4 and out's row 4
  assert not report.kept_shape_sites
  assert _max_diff(small, model, x) < 1e-5


class DecayingSum(nnx.Module):
  """c ← g_t · c + h_t over time with per-step gains scanned over as a plain 1-d array."""

  def __init__(self, rngs):
    self.a = nnx.Linear(3, 8, rngs=rngs)
    self.b = nnx.Linear(8, 2, rngs=rngs)

  def __call__(self, x):
    h = self.a(x)
    gains = jnp.linspace(0.5, 1.0, x.shape[1])

    def step(c, xs):
      g, h_t = xs
      return c * g + h_t, None

    c, _ = jax.lax.scan(step, jnp.zeros_like(h[:, 0]), (gains, h.swapaxes(0, 1)))
    return self.b(c)


def test_a_dead_channel_scanned_over_stays_dead():
  # a's output 2 is zero at every step, so the carry's channel 2 stays zero: a's filter and bias (3 + 1) and b's
  # row (2) go. Before, each step's slice was taken as unknown and nothing was cut.
  model = DecayingSum(nnx.Rngs(0))
  model.a.kernel[...] = model.a.kernel[...].at[:, 2].set(0)
  model.a.bias[...] = model.a.bias[...].at[2].set(0)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 5, 3)), jnp.float32)
  small, report = surgery.shrink_with_report(model, x)
  assert (report.params_before, report.params_after) == (50, 44)
  assert _max_diff(small, model, x) < 1e-5


def test_entries_cut_reads_a_plan_entry_by_entry():
  shapes = {"w": (2, 3)}
  cuts = {"w": [(1, [0, 2])]}  # column 1 dropped
  column = lambda j: np.ravel_multi_index((np.arange(2), np.full(2, j)), (2, 3))
  assert entries_cut(cuts, {"w": column(1)}, shapes)
  assert not entries_cut(cuts, {"w": column(0)}, shapes)
  assert not entries_cut(cuts, {"w": np.concatenate([column(1), column(2)])}, shapes)
  assert not entries_cut({}, {"w": column(1)}, shapes)


# ------------------------------------------------ jnp.stack, jnp.tile, lax.dynamic_slice (primitives of their own) ---


class StackedBranches(nnx.Module):
  """Two branches stacked on a new axis, then flattened into the head: (b, 2, 12) -> (b, 24)."""

  def __init__(self, rngs):
    self.inp = nnx.Linear(6, 16, rngs=rngs)
    self.b1 = nnx.Linear(16, 12, rngs=rngs)
    self.b2 = nnx.Linear(16, 12, rngs=rngs)
    self.head = nnx.Linear(24, 4, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.inp(x))
    stacked = jnp.stack([nnx.relu(self.b1(h)), nnx.tanh(self.b2(h))], 1)
    return self.head(stacked.reshape(stacked.shape[0], -1))


def _vectors():
  return jnp.asarray(np.random.default_rng(4).normal(size=(3, 6)), jnp.float32)


def test_stacked_operands_lose_a_channel_together():
  # the head's rows 3 and 12 + 3 read channel 3 of both branches: zeroed, both branches' filter 3 (16 + 1 each) and
  # those rows (4 each) go. Before, `stack` was an op the trace did not know: every branch channel stayed.
  model = StackedBranches(nnx.Rngs(0))
  model.head.kernel[...] = model.head.kernel[...].at[np.array([3, 15])].set(0)
  x = _vectors()
  small, report = surgery.shrink_with_report(model, x)
  assert report.params_before - report.params_after == 2 * (16 + 1) + 2 * 4
  assert small.b1.kernel.shape == small.b2.kernel.shape == (16, 11)
  assert _max_diff(small, model, x) < 1e-5


def test_a_channel_dead_in_one_stacked_operand_only_stays():
  # b1's filter 3 is zero but b2's is not: the stack needs equal shapes, so channel 3 stays in both
  model = StackedBranches(nnx.Rngs(0))
  model.b1.kernel[...] = model.b1.kernel[...].at[:, 3].set(0)
  model.b1.bias[...] = model.b1.bias[...].at[3].set(0)
  x = _vectors()
  small, report = surgery.shrink_with_report(model, x)
  assert report.params_after == report.params_before
  assert _max_diff(small, model, x) < 1e-5


def test_for_model_units_of_stacked_channels_hold_every_copy():
  model = StackedBranches(nnx.Rngs(0))
  reg = regularisers.group_lasso(neuron=0.1).for_model(model, _vectors())
  head = {frozenset(u["head/kernel"].tolist()) for u in reg.units.units if set(u) == {"head/kernel"}}
  rows = lambda r: set(range(r * 4, r * 4 + 4))
  assert head == {frozenset(rows(j) | rows(12 + j)) for j in range(12)}


class TiledChannels(nnx.Module):
  def __init__(self, rngs):
    self.a = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.b = nnx.Conv(16, 8, (3, 3), rngs=rngs)
    self.head = nnx.Linear(8, 4, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.a(x))
    return self.head(nnx.relu(self.b(jnp.tile(h, (1, 1, 1, 2)))).mean((1, 2)))


def test_a_tiled_channel_goes_with_every_copy():
  # a's filter 5 and bias are zero: channel 5 and its copy 8 + 5 are dead; a loses 3·3·3 + 1, b its input slices 5
  # and 13 (3·3·8 each)
  model = TiledChannels(nnx.Rngs(0))
  model.a.kernel[...] = model.a.kernel[...].at[..., 5].set(0)
  model.a.bias[...] = model.a.bias[...].at[5].set(0)
  x = _image()
  small, report = surgery.shrink_with_report(model, x)
  assert report.params_before - report.params_after == 27 + 1 + 2 * 72
  assert small.b.kernel.shape == (3, 3, 14, 8)
  assert _max_diff(small, model, x) < 1e-5


class LastSteps(nnx.Module):
  def __init__(self, rngs):
    self.a = nnx.Linear(3, 8, rngs=rngs)
    self.b = nnx.Linear(8, 4, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.a(x))
    return self.b(jax.lax.dynamic_slice_in_dim(h, h.shape[1] - 2, 2, axis=1).mean(1))


def test_a_dynamic_slice_at_known_indices_is_a_slice():
  # a's filter 2 and bias are zero: 3 + 1 entries and b's row 2 (4) go
  model = LastSteps(nnx.Rngs(0))
  model.a.kernel[...] = model.a.kernel[...].at[:, 2].set(0)
  model.a.bias[...] = model.a.bias[...].at[2].set(0)
  x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 6, 3)), jnp.float32)
  small, report = surgery.shrink_with_report(model, x)
  assert (report.params_before, report.params_after) == (68, 60)
  assert _max_diff(small, model, x) < 1e-5


# ------------------------------------------------------------------------- models computing in bfloat16 ---


class Bfloat16Net(nnx.Module):
  def __init__(self, rngs):
    kw = dict(dtype=jnp.bfloat16, rngs=rngs)
    self.c1 = nnx.Conv(3, 16, (3, 3), **kw)
    self.c2 = nnx.Conv(16, 16, (3, 3), **kw)
    self.head = nnx.Linear(16, 4, **kw)

  def __call__(self, x):
    h = nnx.relu(self.c2(nnx.relu(self.c1(x.astype(jnp.bfloat16)))))
    return self.head(h.mean((1, 2))).astype(jnp.float32)


def test_a_bfloat16_model_is_compared_within_its_own_rounding():
  # 8 of c1's filters and 4 of c2's are zero: the cut model sums over fewer channels, which moves bfloat16 outputs
  # by an ulp (0.0039 at outputs up to 1.5: float32's 1e-4 · max(1, |y|) made shrink raise)
  model = Bfloat16Net(nnx.Rngs(0))
  dead = np.random.default_rng(0).permutation(16)[:8]
  model.c1.kernel[...] = model.c1.kernel[...].at[..., dead].set(0)
  model.c1.bias[...] = model.c1.bias[...].at[dead].set(0)
  model.c2.kernel[...] = model.c2.kernel[...].at[..., dead[:4]].set(0)
  model.c2.bias[...] = model.c2.bias[...].at[dead[:4]].set(0)
  x = jnp.asarray(np.random.default_rng(6).normal(size=(4, 8, 8, 3)) * 4, jnp.float32)
  small, report = surgery.shrink_with_report(model, x)
  assert small.c1.kernel.shape == (3, 3, 3, 8) and small.c2.kernel.shape == (3, 3, 8, 12)
  assert report.max_abs_diff > 1e-4 * max(1.0, float(jnp.max(jnp.abs(model(x)))))  # what float32's bound refused
  assert report.max_abs_diff <= 4 * float(jnp.finfo(jnp.bfloat16).eps) * max(1.0, float(jnp.max(jnp.abs(model(x)))))
  from mobileprune_jax.surgery.parity import coarsest_float
  assert coarsest_float(model, x) == jnp.bfloat16
  assert coarsest_float(StdNet(nnx.Rngs(0)), _image()) == jnp.float32


def test_a_real_difference_in_a_bfloat16_model_is_still_refused():
  from mobileprune_jax.surgery.parity import parity_failure

  model = Bfloat16Net(nnx.Rngs(0))
  other = nnx.clone(model)
  other.head.bias[...] = other.head.bias[...] + 0.25  # every output moves by 0.25
  x = jnp.asarray(np.random.default_rng(6).normal(size=(4, 8, 8, 3)) * 4, jnp.float32)
  report = surgery.plan(model, x)
  failure = parity_failure(model, other, x, 1e-4, report)
  assert failure is not None and "4 ulps of bfloat16" in str(failure), failure
  assert parity_failure(model, nnx.clone(model), x, 1e-4, report) is None


class TwoEncodersAlongTime(nnx.Module):
  """Two encoders' sequences joined along time, then a layer over the channels."""

  def __init__(self, rngs):
    self.ea = nnx.Linear(3, 16, rngs=rngs)
    self.eb = nnx.Linear(5, 16, rngs=rngs)
    self.mix = nnx.Linear(16, 16, rngs=rngs)
    self.head = nnx.Linear(16, 4, rngs=rngs)

  def __call__(self, a, b):
    h = jnp.concatenate([nnx.relu(self.ea(a)), nnx.relu(self.eb(b))], axis=1)
    return self.head(nnx.relu(self.mix(h)).mean(1))


def test_sequences_joined_along_time_lose_a_channel_together():
  # mix's row 3 is zero: channel 3 of both encoders is read by nothing, so ea's and eb's filter 3 (3 + 1, 5 + 1) and
  # the row (16) go. Before, mix's input 3 carried two channels and was kept.
  model = TwoEncodersAlongTime(nnx.Rngs(0))
  model.mix.kernel[...] = model.mix.kernel[...].at[3].set(0)
  rng = np.random.default_rng(7)
  x = (jnp.asarray(rng.normal(size=(2, 6, 3)), jnp.float32), jnp.asarray(rng.normal(size=(2, 4, 5)), jnp.float32))
  small, report = surgery.shrink_with_report(model, x)
  assert (report.params_before, report.params_after) == (500, 474)
  assert small.ea.kernel.shape == (3, 15) and small.eb.kernel.shape == (5, 15)
  assert float(jnp.max(jnp.abs(small(*x) - model(*x)))) < 1e-5


# ------------------------------------------------------- a model whose call defaults to training mode ---


class TrainByDefault(nnx.Module):
  """Flax examples' style: ``train=True`` by default, passed on to BatchNorm and Dropout (overriding ``.eval()``)."""

  def __init__(self, rngs):
    self.c1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.bn1 = nnx.BatchNorm(8, rngs=rngs)
    self.c2 = nnx.Conv(8, 6, (3, 3), rngs=rngs)
    self.bn2 = nnx.BatchNorm(6, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)
    self.head = nnx.Linear(6, 4, rngs=rngs)

  def __call__(self, x, train: bool = True):
    h = nnx.relu(self.bn1(self.c1(x), use_running_average=not train))
    h = nnx.relu(self.bn2(self.c2(h), use_running_average=not train))
    return self.head(self.drop(h.mean((1, 2)), deterministic=not train))


def test_a_model_training_by_default_is_traced_and_compared_in_inference_mode():
  # the head's row 2 is zero: c2's filter 2 (3·3·8 + 1), bn2's scale and shift (2; its statistics are not counted as
  # parameters) and the row (4) go. Before, the trace and
  # the comparison ran the training forward (dropout on, batch statistics): shrink raised (outputs differed by 0.8)
  model = TrainByDefault(nnx.Rngs(0))
  model.head.kernel[...] = model.head.kernel[...].at[2].set(0)
  x = _image()
  small, report = surgery.shrink_with_report(model, x)
  assert report.params_before - report.params_after == 3 * 3 * 8 + 1 + 2 + 4
  assert small.bn2.mean.shape == (5,)
  model.eval()
  small.eval()
  assert float(jnp.max(jnp.abs(small(x, train=False) - model(x, train=False)))) < 1e-5
  # a flag given in sample_input is left as given
  from mobileprune_jax.surgery.depgraph import inference_kwargs
  assert inference_kwargs(model, (x,), {}) == {"train": False}
  assert inference_kwargs(model, (x, True), {}) == {}
  assert inference_kwargs(model, (x,), {"train": True}) == {"train": True}


# ----------------------------------------------- an attention mask built from an input: a copy along the heads ---


class MaskedAttention(nnx.Module):
  """Token ids and a padding mask in; the mask is made pairwise and broadcast over heads by nnx.MultiHeadAttention."""

  def __init__(self, rngs):
    self.emb = nnx.Embed(30, 16, rngs=rngs)
    self.att = nnx.MultiHeadAttention(4, 16, decode=False, rngs=rngs)
    self.head = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, ids, mask):
    h = self.emb(ids)
    h = h + self.att(h, mask=mask[:, None, None, :] & mask[:, None, :, None], deterministic=True)
    return self.head(h.mean(1))


def test_a_head_goes_under_a_padding_mask_from_the_input():
  # the out projection's rows of head 2 are zero: its q/k/v filters (16·4 + 4 each) and those rows (4·16) go. The
  # mask reached the scores through a reshape and an `and` that dropped its being a copy along the heads, so every
  # head met "an op the trace does not understand" and was kept.
  model = MaskedAttention(nnx.Rngs(0))
  model.att.out.kernel[...] = model.att.out.kernel[...].at[2].set(0)
  rng = np.random.default_rng(8)
  x = (jnp.asarray(rng.integers(0, 30, (3, 7))), jnp.asarray(rng.random((3, 7)) > 0.3).at[:, 0].set(True))
  small, report = surgery.shrink_with_report(model, x)
  assert report.params_before - report.params_after == 3 * (16 * 4 + 4) + 4 * 16
  assert small.att.num_heads == 3
  assert float(jnp.max(jnp.abs(small(*x) - model(*x)))) < 1e-5


# ----------------------------------------------- a class token concatenated before the patches, a position table ---


class TokenStream(nnx.Module):
  """A ViT-style stream with no normalisation over channels: patches, a class token joined along the tokens, a
  position table added, one attention and one MLP block on the residual stream."""

  def __init__(self, rngs, d=16):
    self.patch = nnx.Conv(3, d, (4, 4), strides=4, rngs=rngs)
    self.cls = nnx.Param(jax.random.normal(jax.random.key(1), (1, 1, d)))
    self.pos = nnx.Param(jax.random.normal(jax.random.key(2), (1, 5, d)))
    self.att = nnx.MultiHeadAttention(4, d, decode=False, rngs=rngs)
    self.f1 = nnx.Linear(d, 32, rngs=rngs)
    self.f2 = nnx.Linear(32, d, rngs=rngs)
    self.head = nnx.Linear(d, 4, rngs=rngs)

  def __call__(self, x):
    h = self.patch(x)
    h = h.reshape(h.shape[0], -1, h.shape[-1])
    h = jnp.concatenate([jnp.broadcast_to(self.cls[...], (h.shape[0], 1, h.shape[-1])), h], 1) + self.pos[...]
    h = h + self.att(h, deterministic=True)
    h = h + self.f2(nnx.relu(self.f1(h)))
    return self.head(h[:, 0])


def _stream_image():
  return jnp.asarray(np.random.default_rng(9).normal(size=(2, 8, 8, 3)), jnp.float32)


def test_a_stream_channel_goes_with_its_class_token_and_position_entries():
  # every writer of stream channel 5 is zero (the patch filter and bias, the class token's and the position table's
  # entries, the attention's and the MLP's output columns and biases): 4·4·3 + 1, 1, 5, q/k/v rows 3·16, out 16 + 1,
  # f1's row 32, f2's column 32 + 1 and the head's row 4 go. Before, the class token's position carried no channel,
  # so every stream channel was kept.
  model = TokenStream(nnx.Rngs(0))
  j = 5
  model.patch.kernel[...] = model.patch.kernel[...].at[..., j].set(0)
  model.patch.bias[...] = model.patch.bias[...].at[j].set(0)
  model.cls[...] = model.cls[...].at[..., j].set(0)
  model.pos[...] = model.pos[...].at[..., j].set(0)
  model.att.out.kernel[...] = model.att.out.kernel[...].at[..., j].set(0)
  model.att.out.bias[...] = model.att.out.bias[...].at[j].set(0)
  model.f2.kernel[...] = model.f2.kernel[...].at[:, j].set(0)
  model.f2.bias[...] = model.f2.bias[...].at[j].set(0)
  x = _stream_image()
  small, report = surgery.shrink_with_report(model, x)
  assert report.params_before - report.params_after == 49 + 1 + 5 + 48 + 17 + 32 + 33 + 4
  assert small.cls.shape == (1, 1, 15) and small.pos.shape == (1, 5, 15)
  assert _max_diff(small, model, x) < 1e-5


def test_egl_writer_units_of_the_stream_hold_the_class_token_and_position_entries():
  model = TokenStream(nnx.Rngs(0))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    reg = regularisers.elastic_group_lasso(0.5, 1e-3).for_model(model, _stream_image())
  assert not [str(w.message) for w in caught if "cls" in str(w.message)]  # not "parameters no layer explains"
  for j in range(16):
    unit = next(u for u in reg.units.units if j in u.get("patch/bias", []))
    assert set(unit["cls"].tolist()) == {j}
    assert set(unit["pos"].tolist()) == {p * 16 + j for p in range(5)}
