"""``for_model`` on ways users write models that change nothing about the units: rematerialised layers
(``nnx.remat`` / ``jax.checkpoint``) and scalar gains (ReZero). Units are listed by hand; surgery on a copy with a
unit zeroed by hand is the reference for what a unit may remove."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mobileprune_jax import groups, models, regularisers, surgery
from mobileprune_jax.units import units_from_graph

X = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6, 6, 3)), jnp.float32)


class RematNet(nnx.Module):
  """A residual conv block whose second conv runs under ``nnx.remat`` or ``jax.checkpoint`` (memory-saving)."""

  def __init__(self, rngs, how):
    self.c1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.c2 = nnx.Conv(8, 8, (3, 3), rngs=rngs)
    self.out = nnx.Linear(8, 4, rngs=rngs)
    self.how = how

  def __call__(self, x):
    h = nnx.relu(self.c1(x))
    if self.how == "nnx.remat":
      h = h + nnx.remat(lambda conv, a: nnx.relu(conv(a)))(self.c2, h)
    else:
      h = h + jax.checkpoint(lambda a: nnx.relu(self.c2(a)))(h)
    return self.out(h.mean((1, 2)))


def _mask(shape, select):
  m = np.zeros(shape, bool)
  m[select] = True
  return m


def _unit_set(units):
  return {frozenset((p, int(i)) for p, idx in u.items() for i in idx) for u in units}


def _zeroed(model, unit):
  """A copy of ``model`` with every entry of ``unit`` ({path: flat indices}) set to zero by hand."""
  copy = nnx.clone(model)
  params = nnx.state(copy, nnx.Param)
  variables = dict(zip(groups.leaf_paths(params), jax.tree.leaves(params, is_leaf=lambda v: isinstance(v, nnx.Variable))))
  for path, idx in unit.items():
    value = np.array(variables[path][...])
    value.reshape(-1)[idx] = 0
    variables[path][...] = jnp.asarray(value)
  return copy


@pytest.mark.parametrize("how", ["nnx.remat", "jax.checkpoint"])
def test_layers_under_remat_are_units_like_any_other(how):
  model = RematNet(nnx.Rngs(0), how)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # before: "1 kernel(s) the trace cannot see ... c2/kernel", kept whole
    reg = regularisers.group_lasso(channel=0.1, neuron=0.1).for_model(model, X)
  # stream channel j (c1's output plus c2's, added) is read by c2's input slice j and out's row j
  expected = {frozenset([("c2/kernel", int(i)) for i in np.flatnonzero(_mask((3, 3, 8, 8), np.s_[:, :, j, :]))]
                        + [("out/kernel", int(i)) for i in np.flatnonzero(_mask((8, 4), np.s_[j, :]))])
              for j in range(8)}
  assert _unit_set(reg.units.units) == expected
  model = _zeroed(model, {"c2/kernel": np.flatnonzero(_mask((3, 3, 8, 8), np.s_[:, :, 5, :])),
                          "out/kernel": np.arange(20, 24)})  # unit 5 zeroed by hand
  small = surgery.shrink(model, X)
  assert small.c1.kernel.shape == (3, 3, 3, 7) and small.c2.kernel.shape == (3, 3, 7, 7)
  assert small.out.kernel.shape == (7, 4)
  np.testing.assert_allclose(np.asarray(small(X)), np.asarray(model(X)), atol=1e-5)


class ReZero(nnx.Module):
  """x + alpha·f(x) with one learned scalar alpha."""

  def __init__(self, rngs):
    self.inp = nnx.Linear(5, 8, rngs=rngs)
    self.f = nnx.Linear(8, 8, rngs=rngs)
    self.alpha = nnx.Param(jnp.array(0.1))
    self.out = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    h = self.inp(x)
    return self.out(h + self.alpha[...] * nnx.relu(self.f(h)))


def test_a_scalar_gain_is_an_unpenalised_scale_without_a_warning():
  model = ReZero(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(6, 5)), jnp.float32)
  params = nnx.state(model, nnx.Param)
  with pytest.raises(ValueError, match="alpha"):  # from the params alone nothing says what it is
    regularisers.group_lasso(neuron=0.1).roles(params)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # before: "1 parameter(s) the model's layers do not explain ... alpha"
    reg = regularisers.l0_sparse_group_lasso(0.01, neuron=0.5).for_model(model, x)
  roles = dict(zip(groups.leaf_paths(params), reg.roles(params)))
  assert roles["alpha"] == "none" and roles["f/kernel"] == roles["out/kernel"] == "dense"
  new = reg.prox(params, 1.0)
  np.testing.assert_array_equal(np.asarray(new["alpha"][...]), np.float32(0.1))
  assert np.any(np.asarray(new["f"]["kernel"][...]) != np.asarray(params["f"]["kernel"][...]))  # f is penalised


class AttentionPool(nnx.Module):
  """Features weighted by a softmax over positions of a one-channel score (attention pooling), or by a sigmoid
  spatial gate, before the head: the (b, h, w, 1) weight is broadcast over the 8 channels."""

  def __init__(self, rngs, gate):
    self.c1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.score = nnx.Conv(8, 1, (1, 1), rngs=rngs)
    self.out = nnx.Linear(8, 4, rngs=rngs)
    self.gate = gate

  def __call__(self, x):
    h = nnx.relu(self.c1(x))
    s = self.score(h)
    if self.gate:
      return self.out((h * nnx.sigmoid(s)).mean((1, 2)))
    w = jax.nn.softmax(s.reshape(s.shape[0], -1), -1).reshape(s.shape)
    return self.out((h * w).sum((1, 2)))


@pytest.mark.parametrize("gate", [False, True])
def test_a_weight_map_broadcast_over_the_channels_leaves_each_channel_its_own_unit(gate):
  model = AttentionPool(nnx.Rngs(0), gate)
  reg = regularisers.group_lasso(channel=0.1, neuron=0.1).for_model(model, X)
  # channel j of c1 is read by score's input j and out's row j (before: one unit of all 8 channels, never removed)
  expected = {frozenset([("score/kernel", j), *(("out/kernel", 4 * j + k) for k in range(4))]) for j in range(8)}
  assert _unit_set(reg.units.units) == expected
  model = _zeroed(model, {"score/kernel": [2], "out/kernel": np.arange(8, 12)})  # unit 2 zeroed by hand
  small = surgery.shrink(model, X)
  assert small.c1.kernel.shape == (3, 3, 3, 7) and small.score.kernel.shape == (1, 1, 7, 1)
  assert small.out.kernel.shape == (7, 4)
  np.testing.assert_allclose(np.asarray(small(X)), np.asarray(model(X)), atol=1e-5)


class SpatialAttention(nnx.Module):
  """CBAM's spatial attention: a gate computed from the mean and max over the channels scales every channel."""

  def __init__(self, rngs):
    self.c1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.gate = nnx.Conv(2, 1, (3, 3), rngs=rngs)
    self.out = nnx.Linear(8, 4, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.c1(x))
    g = self.gate(jnp.concatenate([h.mean(-1, keepdims=True), h.max(-1, keepdims=True)], -1))
    return self.out((h * nnx.sigmoid(g)).mean((1, 2)))


def test_a_gate_computed_over_all_channels_still_keeps_them():
  """Removing a channel would change the mean over channels the gate reads: the broadcast weight does not free them."""
  model = SpatialAttention(nnx.Rngs(0))
  model.out.kernel[...] = model.out.kernel[...].at[jnp.asarray([0, 5]), :].set(0)  # nobody reads channels 0 and 5
  small = surgery.shrink(model, X)
  assert small.c1.kernel.shape == (3, 3, 3, 8) and small.out.kernel.shape == (8, 4)
  np.testing.assert_allclose(np.asarray(small(X)), np.asarray(model(X)), atol=1e-5)


class ConvPReLU(nnx.Module):
  """Conv + bias → PReLU (a learned per-channel slope) → BatchNorm → conv: every vector is non-zero after training."""

  def __init__(self, rngs):
    self.c1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.slope = nnx.Param(jnp.full((8,), 0.25))
    self.bn = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
    self.c2 = nnx.Conv(8, 6, (3, 3), rngs=rngs)
    self.out = nnx.Linear(6, 4, rngs=rngs)

  def __call__(self, x):
    h = self.c1(x)
    h = self.bn(jnp.where(h > 0, h, self.slope[...] * h))
    return self.out(nnx.relu(self.c2(h)).mean((1, 2)))


def _trained_looking(model, seed):
  """Every vector (biases, norm scales and shifts, running means) random and non-zero, as after training."""
  rng = np.random.default_rng(seed)
  state = nnx.state(model)
  leaves, treedef = jax.tree.flatten(state)
  leaves = [jnp.asarray(rng.uniform(0.5, 1.5, v.shape) * rng.choice([-1, 1], v.shape), v.dtype)
            if v.ndim == 1 and jnp.issubdtype(v.dtype, jnp.floating) else v for v in leaves]
  nnx.update(model, jax.tree.unflatten(treedef, leaves))
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm):
      node.var[...] = jnp.abs(node.var[...])  # variances stay positive
  return model


@pytest.mark.parametrize("make, x", [
    (lambda: ConvPReLU(nnx.Rngs(0)), X),
    (lambda: RematNet(nnx.Rngs(1), "nnx.remat"), X),
    (lambda: models.create("resnet20", in_channels=3), X),
])
def test_a_zero_egl_writer_unit_is_a_channel_surgery_removes(make, x):
  """EGL's writer units hold the producers' biases and the norm parameters of their channels, so a unit at zero is
  an exactly-zero channel (with the filters alone it stayed at its bias and was kept)."""
  model = _trained_looking(make(), 0)
  model.eval()
  reg = regularisers.elastic_group_lasso(0.1, 0.0).for_model(model, x)
  units = reg.units.units
  for u in (units[0], units[len(units) // 2], units[-1]):
    copy = _zeroed(model, u)
    small, report = surgery.shrink_with_report(copy, x)
    assert report.params_after < report.params_before
    zeros_left = sum(int(np.sum(np.asarray(v) == 0)) for p, v in zip(
        groups.leaf_paths(nnx.state(small, nnx.Param)), jax.tree.leaves(nnx.state(small, nnx.Param)))
        if p.endswith("kernel"))
    assert zeros_left == 0, (u.keys(), zeros_left)  # nothing of the unit is left behind
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(copy(x)), atol=1e-4)


class CondNet(nnx.Module):
  """A ``lax.cond`` on the input: either the features doubled or a layer over them (both branches may run)."""

  def __init__(self, rngs):
    self.a = nnx.Linear(5, 8, rngs=rngs)
    self.b = nnx.Linear(8, 8, rngs=rngs)
    self.o = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.a(x))
    h = jax.lax.cond(jnp.mean(x) > 0, lambda h: 2 * h, lambda h: nnx.relu(self.b(h)), h)
    return self.o(h)


def test_layers_inside_a_cond_are_units_and_either_branch_stays_exact():
  model = CondNet(nnx.Rngs(0))
  rng = np.random.default_rng(2)
  x_pos = jnp.asarray(rng.normal(size=(4, 5)) + 3, jnp.float32)  # the first branch runs
  x_neg = jnp.asarray(rng.normal(size=(4, 5)) - 3, jnp.float32)  # the second
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # before: "1 kernel(s) the trace cannot see ... b/kernel", kept whole
    reg = regularisers.group_lasso(neuron=0.1).for_model(model, x_pos)
  # the cond's output j is a's channel j (doubled) or b's output j: one set, read by b's row j and o's row j
  expected = {frozenset([*(("b/kernel", 8 * j + k) for k in range(8)), *(("o/kernel", 3 * j + k) for k in range(3))])
              for j in range(8)}
  assert _unit_set(reg.units.units) == expected
  model.b.kernel[...] = model.b.kernel[...].at[3, :].set(0)  # unit 3 zeroed by hand
  model.o.kernel[...] = model.o.kernel[...].at[3, :].set(0)
  small = surgery.shrink(model, x_pos)
  assert small.a.kernel.shape == (5, 7) and small.b.kernel.shape == (7, 7) and small.o.kernel.shape == (7, 3)
  for x in (x_pos, x_neg):
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-5)


class SplitBranches(nnx.Module):
  """One projection split in two equal parts (``jnp.split(h, 2)``), each part its own branch, then joined."""

  def __init__(self, rngs):
    self.proj = nnx.Linear(5, 16, rngs=rngs)
    self.fa = nnx.Linear(8, 6, rngs=rngs)
    self.fb = nnx.Linear(8, 6, rngs=rngs)
    self.out = nnx.Linear(12, 3, rngs=rngs)

  def __call__(self, x):
    a, b = jnp.split(nnx.relu(self.proj(x)), 2, axis=-1)
    return self.out(jnp.concatenate([nnx.relu(self.fa(a)), nnx.relu(self.fb(b))], -1))


def test_equal_parts_of_a_split_go_in_aligned_pairs():
  """jnp.split(h, 2) computes its parts' sizes, so they must stay equal: entry i of each part is one unit (before:
  each its own, a cut of one part broke the split, and for_model kept every split channel out of the units)."""
  model = SplitBranches(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(3).normal(size=(6, 5)), jnp.float32)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    reg = regularisers.group_lasso(neuron=0.1).for_model(model, x)
  pairs = {frozenset([*(("fa/kernel", 6 * i + k) for k in range(6)), *(("fb/kernel", 6 * i + k) for k in range(6))])
           for i in range(8)}
  branch_outputs = {frozenset(("out/kernel", 3 * j + k) for k in range(3)) for j in range(12)}
  assert _unit_set(reg.units.units) == pairs | branch_outputs
  model.fa.kernel[...] = model.fa.kernel[...].at[3, :].set(0)  # the pair unit 3 zeroed by hand
  model.fb.kernel[...] = model.fb.kernel[...].at[3, :].set(0)
  small = surgery.shrink(model, x)
  assert small.proj.kernel.shape == (5, 14) and small.fa.kernel.shape == small.fb.kernel.shape == (7, 6)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-5)


class ShuffleBlock(nnx.Module):
  """ShuffleNetV2's unit: split the channels in halves, one half through pw → dw → pw, concat, channel shuffle."""

  def __init__(self, rngs):
    self.stem = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.pw1 = nnx.Conv(4, 4, (1, 1), rngs=rngs)
    self.dw = nnx.Conv(4, 4, (3, 3), feature_group_count=4, rngs=rngs)
    self.pw2 = nnx.Conv(4, 4, (1, 1), rngs=rngs)
    self.head = nnx.Linear(8, 4, rngs=rngs)

  def __call__(self, x):
    a, b = jnp.split(nnx.relu(self.stem(x)), 2, axis=-1)
    h = jnp.concatenate([a, nnx.relu(self.pw2(self.dw(nnx.relu(self.pw1(b)))))], -1)
    n, hh, ww, c = h.shape
    h = h.reshape(n, hh, ww, 2, c // 2).transpose(0, 1, 2, 4, 3).reshape(n, hh, ww, c)
    return self.head(h.mean((1, 2)))


@pytest.mark.parametrize("make", [lambda: ShuffleBlock(nnx.Rngs(0)), lambda: SplitBranches(nnx.Rngs(0)),
                                  lambda: AttentionPool(nnx.Rngs(0), False), lambda: CondNet(nnx.Rngs(0))],
                         ids=["shuffle", "split", "attention-pool", "cond"])
def test_every_unit_zeroed_alone_is_removed_by_surgery(make):
  """The reference for what a unit may hold: surgery on a copy with only that unit zeroed must remove it (params
  drop, no shape site kept, outputs equal). A shuffle pairs each kept half's channel with the branch's: a cut in one
  half breaks it, so for_model keeps those channels out of the units (one probe per unit, not all at once)."""
  model = make()
  x = X if isinstance(model, (ShuffleBlock, AttentionPool)) else jnp.asarray(
      np.random.default_rng(4).normal(size=(6, 5)) + (3 if isinstance(model, CondNet) else 0), jnp.float32)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    reg = regularisers.group_lasso(neuron=0.1, channel=0.1).for_model(model, x)
  assert reg.units.units
  for u in reg.units.units:
    copy = _zeroed(model, u)
    small, report = surgery.shrink_with_report(copy, x)
    assert report.params_after < report.params_before and report.kept_shape_sites == 0, sorted(u)
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(copy(x)), atol=1e-5)


class TwoAttentionBlocks(nnx.Module):
  """Two attention blocks whose heads are reshaped with -1: each block's reshapes are their own shape sites."""

  def __init__(self, rngs):
    self.blocks = nnx.List([nnx.Linear(8, 24, rngs=rngs) for _ in range(2)])
    self.outs = nnx.List([nnx.Linear(8, 8, rngs=rngs) for _ in range(2)])

  def __call__(self, x):
    b, t, _ = x.shape
    for qkv, out in zip(self.blocks, self.outs):
      q, k, v = (z.reshape(b, t, -1, 4) for z in jnp.split(qkv(x), 3, -1))
      a = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(jnp.einsum("bthd,bshd->bhts", q, k), -1), v)
      x = x + out(a.reshape(b, t, -1))
    return x


def test_the_probe_zeroes_units_of_separate_ops_together_and_units_meeting_in_one_op_apart():
  """What for_model's fixed-shape probe shrinks at once: units of the two blocks' head reshapes (separate ops: one
  shrink, not one per unit: a 6-block ViT took 6–7 s in for_model instead of 1.1 s) and, apart, the shuffle's two
  halves (they meet in its reshape), listed by hand from the architecture."""
  from mobileprune_jax.regularisers import fixed_shapes
  from mobileprune_jax.surgery.shrink import unsynced_sites

  def batches_of(model, x):
    graph = surgery.trace(model, x)
    shapes = {p: tuple(np.shape(v)) for p, v in zip(groups.leaf_paths(nnx.state(model, nnx.Param)),
                                                     jax.tree.leaves(nnx.state(model, nnx.Param)))}
    readers = units_from_graph(graph, shapes, sorted({layer.kernel_path for layer in graph.layers}))
    chosen = fixed_shapes.probe_roots(graph, unsynced_sites(model, graph.shape_sites), readers.roots)
    return [[readers.units[i] for i in batch] for batch in fixed_shapes.probe_batches(graph, chosen, readers.roots)]

  heads = batches_of(TwoAttentionBlocks(nnx.Rngs(0)), jnp.ones((2, 5, 8)))
  assert len(heads) == 1 and {tuple(sorted(u)) for u in heads[0]} == {("outs/0/kernel",), ("outs/1/kernel",)}
  shuffle = batches_of(ShuffleBlock(nnx.Rngs(0)), X)
  halves = [{tuple(sorted(u)) for u in batch} for batch in shuffle]
  pw1_and_head = ("head/kernel", "pw1/kernel")  # a stem channel pair: read by pw1 (one half) and the head (other)
  assert any(pw1_and_head in b for b in halves) and any(("head/kernel",) in b for b in halves)  # pw2's: the head
  assert not any(pw1_and_head in b and ("head/kernel",) in b for b in halves)  # never in one copy


class NormedHidden(nnx.Module):
  """Every channel kept by surgery: inputs, outputs, and hidden channels normalised together by a LayerNorm."""

  def __init__(self, rngs: nnx.Rngs, norm: bool = True):
    self.fc1 = nnx.Linear(6, 8, rngs=rngs)
    self.norm = nnx.LayerNorm(8, rngs=rngs) if norm else None
    self.fc2 = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    h = self.fc1(x)
    return self.fc2(self.norm(h) if self.norm is not None else jax.nn.relu(h))


def test_a_model_with_no_removable_unit_says_so_and_its_kernels_are_left_alone():
  x = jnp.ones((2, 6))
  kernels = lambda p: [np.asarray(p["fc1"]["kernel"]), np.asarray(p["fc2"]["kernel"])]
  model = NormedHidden(nnx.Rngs(0))
  with pytest.warns(UserWarning, match=r"group_lasso.for_model: no channel of this model is a removable unit.*"
                                       r"reduce_sum across channels"):
    reg = regularisers.group_lasso(neuron=10.0, channel=10.0).for_model(model, x)
  params = nnx.state(model, nnx.Param)
  for before, after in zip(kernels(params), kernels(reg.prox(params, 1.0))):
    np.testing.assert_array_equal(after, before)  # no group term: a coefficient that would zero any unit changes nothing
  control = NormedHidden(nnx.Rngs(0), norm=False)  # relu instead: the 8 hidden neurons are units
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    reg = regularisers.group_lasso(neuron=10.0, channel=10.0).for_model(control, x)
  assert np.all(kernels(reg.prox(nnx.state(control, nnx.Param), 1.0))[1] == 0)  # fc2's rows: the hidden units


class KeywordRngs(nnx.Module):
  """A call whose stochastic layers take ``rngs`` by keyword, required (``model(x, rngs=None)`` at inference)."""

  def __init__(self, rngs: nnx.Rngs):
    self.conv = nnx.Conv(3, 6, (3, 3), rngs=rngs)
    self.fc = nnx.Linear(6, 4, rngs=rngs)

  def __call__(self, x, *, rngs: nnx.Rngs | None, train: bool = False):
    h = jax.nn.relu(self.conv(x))
    if train and rngs is not None:  # drop path, as timm-style blocks do
      h = h * jax.random.bernoulli(rngs.dropout(), 0.9, (h.shape[0], 1, 1, 1)) / 0.9
    return self.fc(h.mean(axis=(1, 2)))


def test_a_sample_input_dict_may_hold_none_for_a_required_keyword():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
  sample = {"x": x, "rngs": None}
  model = KeywordRngs(nnx.Rngs(0))
  reg = regularisers.group_lasso(channel=1.0, neuron=1.0).for_model(model, sample)
  assert [sorted(u) for u in reg.units.units] == [["fc/kernel"]] * 6  # conv channel j: fc row j (in and out are I/O)
  params = nnx.state(model, nnx.Param)
  fc = np.asarray(params["fc"]["kernel"]).copy()
  fc[[1, 4]] = 0  # the units of conv channels 1 and 4: their fc rows (one slice each)
  params["fc"]["kernel"].set_value(jnp.asarray(fc))
  small, report = surgery.shrink_with_report(model, sample)
  assert report.params_after == report.params_before - 2 * (3 * 3 * 3 + 1) - 2 * 4  # two filters, biases, fc rows
  np.testing.assert_allclose(small(x, rngs=None), model(x, rngs=None), atol=1e-6)
