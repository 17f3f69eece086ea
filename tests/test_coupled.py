"""Coupled units (``Regulariser.for_model``): hand-written units, exact operators, and training that shrinks streams.

References are independent of the library's analysis: units are written down from the architecture
(which kernel slices read which channel), θ on heterogeneous trees is checked by enumerating supports,
and group lasso's single factor per unit is computed by hand.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from brute_force import brute_theta_leafwise, objective_theta_leafwise
from flax import nnx

from mobileprune_jax import groups, models, prox, regularisers, surgery, transforms
from mobileprune_jax.prox import tree_l0
from mobileprune_jax.surgery.shrink import variables_by_path
from mobileprune_jax.train import palm

# ------------------------------------------------------------------------------------ models ---


class ConvBN(nnx.Module):
  def __init__(self, cin, cout, k, stride, rngs):
    self.conv = nnx.Conv(cin, cout, (k, k), strides=stride, use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(cout, rngs=rngs)

  def __call__(self, x):
    return self.bn(self.conv(x))


class Block(nnx.Module):
  def __init__(self, cin, cout, stride, rngs):
    self.conv1, self.conv2 = ConvBN(cin, cout, 3, stride, rngs), ConvBN(cout, cout, 3, 1, rngs)
    self.proj = ConvBN(cin, cout, 1, stride, rngs) if (stride != 1 or cin != cout) else None

  def __call__(self, x):
    short = self.proj(x) if self.proj is not None else x
    return nnx.relu(self.conv2(nnx.relu(self.conv1(x))) + short)


class TwoStageResNet(nnx.Module):
  """stem → 2 identity blocks (8 ch) → 1 projection block (12 ch) → mean → fc: 4 kernels read each first-stream channel."""

  def __init__(self, rngs, width=8, width2=12, classes=4):
    self.stem = ConvBN(3, width, 3, 1, rngs)
    self.b1, self.b2 = Block(width, width, 1, rngs), Block(width, width, 1, rngs)
    self.b3 = Block(width, width2, 2, rngs)
    self.fc = nnx.Linear(width2, classes, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.stem(x))
    return self.fc(jnp.mean(self.b3(self.b2(self.b1(x))), axis=(1, 2)))


class PlainResNet(nnx.Module):
  """No BatchNorm (PALM differentiates the training-mode forward): stem → identity block → projection block → fc."""

  def __init__(self, rngs):
    conv = lambda cin, cout, k, stride=1: nnx.Conv(cin, cout, (k, k), strides=stride, rngs=rngs)
    self.stem, self.a1, self.a2 = conv(3, 4, 3), conv(4, 4, 3), conv(4, 4, 3)
    self.b1, self.b2, self.proj = conv(4, 6, 3, 2), conv(6, 6, 3), conv(4, 6, 1, 2)
    self.fc = nnx.Linear(6, 4, rngs=rngs)

  def __call__(self, x, train: bool = False):
    x = nnx.relu(self.stem(x))
    x = nnx.relu(x + self.a2(nnx.relu(self.a1(x))))
    x = nnx.relu(self.proj(x) + self.b2(nnx.relu(self.b1(x))))
    return self.fc(jnp.mean(x, axis=(1, 2)))


class InvertedResidual(nnx.Module):
  def __init__(self, c, hidden, rngs):
    self.expand = nnx.Conv(c, hidden, (1, 1), use_bias=False, rngs=rngs)
    self.dw = nnx.Conv(hidden, hidden, (3, 3), feature_group_count=hidden, use_bias=False, rngs=rngs)
    self.project = nnx.Conv(hidden, c, (1, 1), use_bias=False, rngs=rngs)

  def __call__(self, x):
    return x + self.project(jax.nn.relu6(self.dw(jax.nn.relu6(self.expand(x)))))


class MobileBlockNet(nnx.Module):
  def __init__(self, rngs):
    self.stem = nnx.Conv(3, 4, (3, 3), use_bias=False, rngs=rngs)
    self.block = InvertedResidual(4, 12, rngs)
    self.fc = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x):
    return self.fc(jnp.mean(self.block(self.stem(x)), axis=(1, 2)))


class AttentionNet(nnx.Module):
  def __init__(self, rngs):
    self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=6, qkv_features=8, decode=False, rngs=rngs)
    self.fc = nnx.Linear(6, 3, rngs=rngs)

  def __call__(self, x):
    return self.fc(jnp.mean(self.attn(x), axis=1))


# ----------------------------------------------------------------------------------- helpers ---


def _entries(shape, select):
  """Flat indices of the entries ``select`` picks from a kernel of ``shape`` (written by hand per test)."""
  return np.sort(np.asarray(np.arange(int(np.prod(shape))).reshape(shape)[select]).ravel())


def _unit_set(units):
  return {frozenset((p, int(i)) for p, idx in u.items() for i in idx) for u in units}


def _shape(model, path):
  return dict(zip(*_paths_leaves(model)))[path].shape


def _paths_leaves(model):
  from mobileprune_jax.groups import leaf_paths

  params = nnx.state(model, nnx.Param)
  return leaf_paths(params), jax.tree.leaves(params)


def _hand_units(model, spec):
  """spec: list of units, each a list of (path, numpy index expression); expands to {path: flat indices}."""
  out = []
  for unit in spec:
    d = {}
    for path, select in unit:
      d.setdefault(path, []).append(_entries(_shape(model, path), select))
    out.append({p: np.sort(np.concatenate(v)) for p, v in d.items()})
  return out


# ---------------------------------------------------------------- θ on heterogeneous trees ---


@pytest.mark.slow
def test_theta_leafwise_matches_brute_force_on_heterogeneous_trees():
  """Leaves of different sizes (zero padded) and different leaf coefficients: exact against enumeration."""
  rng = np.random.default_rng(0)
  worst, cases = -np.inf, {"zero": 0, "partial": 0, "full": 0}
  for _ in range(150):
    n_leaves = int(rng.integers(1, 4))
    widths = rng.integers(1, 4, size=n_leaves)
    real = np.arange(widths.max())[None, :] < widths[:, None]
    if real.sum() > 10:
      continue
    y = np.where(real, rng.normal(size=real.shape) * rng.choice([0.3, 1.0, 3.0]), 0.0).astype(np.float32)
    alpha = float(rng.choice([0.0, 0.05, 0.3]) * rng.random())
    beta = (rng.random(n_leaves) * rng.choice([0.0, 0.3, 1.0]) * (rng.random(n_leaves) < 0.7)).astype(np.float32)
    gamma = float(rng.random() * rng.choice([0.0, 0.5, 2.0]))
    x = np.asarray(jax.jit(tree_l0.theta_leafwise)(jnp.asarray(y[None]), jnp.asarray([alpha], jnp.float32),
                                                   jnp.asarray(beta[None]), jnp.asarray([gamma], jnp.float32)))[0]
    assert np.all(x[~real] == 0)
    nz = np.count_nonzero(x)
    cases["zero" if nz == 0 else "full" if nz == real.sum() else "partial"] += 1
    gap = objective_theta_leafwise(x, y, alpha, beta, gamma) - brute_theta_leafwise(y, alpha, beta, gamma, real)
    worst = max(worst, gap)
  assert worst < 1e-5, worst
  assert min(cases.values()) >= 10, cases


# ------------------------------------------------------------------------- hand-written units ---


def test_two_stage_residual_net_units_are_every_reader_of_a_channel():
  m = TwoStageResNet(nnx.Rngs(0))
  x = jnp.ones((2, 8, 8, 3))
  reg = regularisers.group_lasso(neuron=0.1, channel=0.1).for_model(m, x)
  c1, c2, b3c1, b3p = "b1/conv1/conv/kernel", "b2/conv1/conv/kernel", "b3/conv1/conv/kernel", "b3/proj/conv/kernel"
  spec = []
  for c in range(8):  # first stream: b1.conv1, b2.conv1, b3.conv1 and the projection read it
    spec.append([(c1, np.s_[:, :, c, :]), (c2, np.s_[:, :, c, :]), (b3c1, np.s_[:, :, c, :]), (b3p, np.s_[:, :, c, :])])
  for name in ("b1", "b2"):  # inner channels: read by the block's conv2 only
    spec += [[(f"{name}/conv2/conv/kernel", np.s_[:, :, c, :])] for c in range(8)]
  spec += [[("b3/conv2/conv/kernel", np.s_[:, :, c, :])] for c in range(12)]
  spec += [[("fc/kernel", np.s_[c, :])] for c in range(12)]  # second stream: read by the classifier only
  assert _unit_set(reg.units.units) == _unit_set(_hand_units(m, spec))
  # the stem reads the image: its entries are fixed trees (one per tap), in no unit
  assert "stem/conv/kernel" in reg.units.paths
  assert all("stem/conv/kernel" not in u for u in reg.units.units)


def test_group_lasso_shrinks_each_unit_by_one_factor():
  m = TwoStageResNet(nnx.Rngs(1))
  x = jnp.ones((2, 8, 8, 3))
  lam, step = 0.2, 0.7
  reg = regularisers.group_lasso(neuron=lam, channel=lam).for_model(m, x)
  paths, leaves = _paths_leaves(m)
  before = dict(zip(paths, [np.asarray(v, np.float64) for v in leaves]))
  after = dict(zip(paths, [np.asarray(v, np.float64) for v in jax.tree.leaves(reg.prox(nnx.state(m, nnx.Param), step))]))
  for unit in reg.units.units:
    y = np.concatenate([before[p].ravel()[i] for p, i in unit.items()])
    z = np.concatenate([after[p].ravel()[i] for p, i in unit.items()])
    expected = max(0.0, 1 - step * lam * np.sqrt(_slices(unit, before)) / np.linalg.norm(y))
    np.testing.assert_allclose(z, expected * y, rtol=2e-5, atol=1e-7)
  np.testing.assert_array_equal(after["stem/conv/kernel"], before["stem/conv/kernel"])  # fixed: no unit term


def _slices(unit, before):
  """Slices a unit joins, counted by hand: one per conv input channel (taps × filters), one per dense row."""
  n = 0
  for path, idx in unit.items():
    shape = before[path].shape
    if len(shape) == 2:
      n += len(idx) // shape[-1]  # dense rows
    elif shape[-2] == 1:
      n += len(idx) // int(np.prod(shape[:-2]))  # a depthwise filter: its taps
    else:
      n += len(idx) // (int(np.prod(shape[:-2])) * shape[-1])  # conv input channel: taps × filters
  return n


def test_group_lasso_zeroes_a_whole_stream_channel_and_surgery_removes_it():
  m = TwoStageResNet(nnx.Rngs(2))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 3)), jnp.float32)
  reg = regularisers.group_lasso(channel=1.0).for_model(m, x)
  variables = variables_by_path(m)
  for c in (2, 5):  # make first-stream channels 2 and 5 weak in every reader
    for path in ("b1/conv1/conv/kernel", "b2/conv1/conv/kernel", "b3/conv1/conv/kernel", "b3/proj/conv/kernel"):
      k = np.asarray(variables[path].get_value()).copy()
      k[:, :, c, :] *= 1e-3
      variables[path].set_value(jnp.asarray(k))
  nnx.update(m, reg.prox(nnx.state(m, nnx.Param), 0.01))  # threshold 0.01·√4: only the weak units go
  k = np.asarray(m.b3.proj.conv.kernel.get_value())
  assert np.all(k[:, :, [2, 5], :] == 0) and np.all(np.any(k[:, :, [0, 1, 3, 4, 6, 7], :] != 0, axis=(0, 1, 3)))
  small, report = surgery.shrink_with_report(m, x)
  assert small.stem.conv.kernel.shape[-1] == 6 and small.b3.proj.conv.kernel.shape[-2] == 6
  assert report.max_abs_diff < 1e-4


def test_mobilenet_block_units_join_the_depthwise_filter_and_the_project_row():
  m = MobileBlockNet(nnx.Rngs(0))
  x = jnp.ones((2, 6, 6, 3))
  reader = regularisers.l0_sparse_group_lasso(1e-3, neuron=0.1, channel=0.1, shape=0.01).for_model(m, x)
  spec = [[("block/dw/kernel", np.s_[:, :, 0, c]), ("block/project/kernel", np.s_[:, :, c, :])] for c in range(12)]
  spec += [[("block/expand/kernel", np.s_[:, :, c, :])] for c in range(4)]  # the stream: expand reads it ...
  spec += [[("fc/kernel", np.s_[c, :])] for c in range(4)]  # ... and, after the add, the classifier: one set
  spec = spec[:12] + [spec[12 + c] + spec[16 + c] for c in range(4)]
  assert _unit_set(reader.units.units) == _unit_set(_hand_units(m, spec))
  writer = regularisers.elastic_group_lasso(1e-3, 1e-4).for_model(m, x)
  spec = [[("block/expand/kernel", np.s_[:, :, :, c]), ("block/dw/kernel", np.s_[:, :, :, c])] for c in range(12)]
  spec += [[("stem/kernel", np.s_[:, :, :, c]), ("block/project/kernel", np.s_[:, :, :, c])] for c in range(4)]
  assert _unit_set(writer.units.units) == _unit_set(_hand_units(m, spec))


def test_lenet5_flattened_channel_is_its_sixteen_dense_rows():
  m = models.create("lenet5")
  x = jnp.ones((2, 28, 28, 1))
  reg = regularisers.l0_sparse_group_lasso(1e-4, neuron=0.1, channel=0.1, shape=0.01).for_model(m, x)
  conv2 = [[("conv2/kernel", np.s_[:, :, c, :])] for c in range(20)]
  rows = [[("fc1/kernel", np.s_[[(h * 4 + w) * 50 + c for h in range(4) for w in range(4)], :])] for c in range(50)]
  neurons = [[("fc2/kernel", np.s_[j, :])] for j in range(500)]
  assert _unit_set(reg.units.units) == _unit_set(_hand_units(m, conv2 + rows + neurons))


def test_attention_head_unit_is_its_out_projection_rows():
  m = AttentionNet(nnx.Rngs(0))
  x = jnp.ones((2, 5, 6))
  reg = regularisers.group_lasso(neuron=0.1, channel=0.1).for_model(m, x)
  heads = [[("attn/out/kernel", np.s_[h, :, :])] for h in range(2)]
  stream = [[("fc/kernel", np.s_[c, :])] for c in range(6)]
  assert _unit_set(reg.units.units) == _unit_set(_hand_units(m, heads + stream))
  writer = regularisers.elastic_group_lasso(1e-3, 0.0).for_model(m, x)
  qkv = [[(f"attn/{n}/{p}", np.s_[:, h, :] if p == "kernel" else np.s_[h, :]) for n in ("query", "key", "value")
          for p in ("kernel", "bias")] for h in range(2)]  # a writer unit holds its channels' biases too
  outs = [[("attn/out/kernel", np.s_[:, :, c]), ("attn/out/bias", np.s_[c])] for c in range(6)]
  assert _unit_set(writer.units.units) == _unit_set(_hand_units(m, qkv + outs))


@pytest.mark.parametrize("name, kwargs, shape", [
    ("lenet300", {}, (2, 28, 28, 1)), ("lenet5", {}, (2, 28, 28, 1)),
    ("resnet20", {"in_channels": 1}, (2, 16, 16, 1)),
    ("mobilenet_v2", {"width": 0.35, "num_classes": 10, "in_channels": 1}, (2, 32, 32, 1)),
    ("har_cnn", {"in_channels": 3, "num_classes": 6, "window": 40, "kernel": 5}, (2, 40, 3)),
    ("vgg_like", {"width": 0.125}, (2, 32, 32, 3))])
@pytest.mark.parametrize("side", ["reader", "writer"])
@pytest.mark.slow
def test_units_partition_every_traced_kernel_of_the_zoo(name, kwargs, shape, side):
  m = models.create(name, **kwargs)
  x = jnp.ones(shape)
  reg = (regularisers.group_lasso(channel=0.1) if side == "reader" else regularisers.elastic_group_lasso(0.1, 0.0))
  units = reg.for_model(m, x).units
  paths, leaves = _paths_leaves(m)
  sizes = dict(zip(paths, [int(np.prod(v.shape)) for v in leaves]))
  traced = [layer.kernel_path for layer in surgery.trace(m, x).layers]
  vectors = set(units.paths) - set(traced)  # writer units hold their channels' biases and norm parameters
  assert set(traced) <= set(units.paths) and (not vectors if side == "reader" else
                                              all(len(_shape(m, p)) == 1 for p in vectors) and vectors)
  counts = np.zeros(units.size, np.int64)
  for b in units.buckets:
    idx = b.index[b.index < units.size]
    np.add.at(counts, idx, 1)
    assert np.all(b.size == np.sum(b.index < units.size, axis=(1, 2)))
  assert np.all(counts == 1)  # every entry of every traced kernel in exactly one tree
  assert units.size == sum(sizes[p] for p in units.paths)
  seen = np.concatenate([np.concatenate([i + units.offsets[units.paths.index(p)] for p, i in u.items()])
                         for u in units.units])
  assert len(seen) == len(np.unique(seen))  # removable units do not overlap


# --------------------------------------------------------------------- exactness through paths ---


@pytest.mark.slow
def test_l0_sgl_on_a_unit_equals_theta_on_the_hand_assembled_tree():
  m = TwoStageResNet(nnx.Rngs(3))
  x = jnp.ones((2, 8, 8, 3))
  l0, neuron, channel, shape, step = 2e-3, 0.05, 0.3, 0.05, 0.5
  reg = regularisers.l0_sparse_group_lasso(l0, neuron=neuron, channel=channel, shape=shape).for_model(m, x)
  paths, leaves = _paths_leaves(m)
  p = dict(zip(paths, [np.asarray(v) for v in leaves]))
  after = dict(zip(paths, [np.asarray(v) for v in jax.tree.leaves(reg.prox(nnx.state(m, nnx.Param), step))]))
  readers = ["b1/conv1/conv/kernel", "b2/conv1/conv/kernel", "b3/conv1/conv/kernel", "b3/proj/conv/kernel"]
  c = 5
  leaves_ = [p[r][h, w, c, :] for r in readers for h in range(p[r].shape[0]) for w in range(p[r].shape[1])]
  width = max(len(v) for v in leaves_)
  tree = np.stack([np.pad(v, (0, width - len(v))) for v in leaves_])[None]
  beta = np.full((1, len(leaves_)), step * shape, np.float32)
  x_tree = np.asarray(jax.jit(tree_l0.theta_leafwise)(jnp.asarray(tree), jnp.asarray([step * l0], jnp.float32),
                                                      jnp.asarray(beta), jnp.asarray([step * channel * 2.0],
                                                                                     jnp.float32)))[0]
  got = [after[r][h, w, c, :] for r in readers for h in range(p[r].shape[0]) for w in range(p[r].shape[1])]
  for v, ref in zip(got, x_tree):
    np.testing.assert_allclose(v, ref[:len(v)], rtol=1e-5, atol=1e-7)


def test_prox_blocks_by_hand():
  """LeNet-5: conv2's 20 input-channel units (25 taps x 50 filters: 25 leaves padded to 32, width 64); fc1's 50
  flattened-channel units (16 rows x 500, one level: 8,000 entries padded to 8,192); fc2's 500 rows (10 wide) and
  conv1's 25 fixed taps (20 wide) in one block padded to 32. MobileBlockNet: each depthwise channel's unit is one
  row of its 9 one-entry taps and the project row (4 wide): 2 leaves; the stream's 4 units (expand row 12 wide, fc
  row 3 wide) join them, padded to 16; the stem's 27 fixed taps (4 wide)."""
  lenet = models.create("lenet5")
  reg = regularisers.l0_sparse_group_lasso(1e-4, neuron=0.1, channel=0.1, shape=0.01)
  assert sorted(reg.for_model(lenet, jnp.ones((2, 28, 28, 1))).block_shapes()) == [(20, 32, 64), (50, 1, 8192),
                                                                                   (525, 1, 32)]
  block = MobileBlockNet(nnx.Rngs(0))
  assert sorted(reg.for_model(block, jnp.ones((2, 6, 6, 3))).block_shapes()) == [(16, 2, 16), (27, 1, 4)]


@pytest.mark.parametrize("method", ["l0_sparse_group_lasso", "l1_sparse_group_lasso", "group_lasso"])
def test_a_depthwise_chain_unit_is_exact_against_enumeration(method):
  """Channel c of MobileBlockNet's block: 9 depthwise taps (each feeds one filter: 9 one-entry leaves of coefficient
  ``shape``) and the project row (a 1x1 tap across 4 filters: one leaf), unit weight √2 (two slices) and
  ``channel``. The library's result for the unit's 13 entries is compared with the minimum over all 2^13 supports
  (ℓ0-SGL; each support solved in closed form) or with the closed-form prox (ℓ1-SGL, group lasso)."""
  m = MobileBlockNet(nnx.Rngs(2))
  x = jnp.ones((2, 6, 6, 3))
  l0, l1, channel, shape, step = 4e-3, 0.02, 0.15, 0.08, 0.5
  coefs = {"l0_sparse_group_lasso": dict(l0=l0), "l1_sparse_group_lasso": dict(l1=l1), "group_lasso": {}}[method]
  reg = getattr(regularisers, method)(**coefs, neuron=0.1, channel=channel, shape=shape).for_model(m, x)
  paths, leaves = _paths_leaves(m)
  p = dict(zip(paths, [np.asarray(v, np.float64) for v in leaves]))
  after = dict(zip(paths, [np.asarray(v, np.float64) for v in jax.tree.leaves(reg.prox(nnx.state(m, nnx.Param), step))]))
  rng = np.random.default_rng(0)
  for c in rng.permutation(12)[:4]:
    dw, row = p["block/dw/kernel"][:, :, 0, c].ravel(), p["block/project/kernel"][0, 0, c, :]
    y = np.zeros((10, 4))
    y[:9, 0], y[9] = dw, row
    real = np.zeros((10, 4), bool)
    real[:9, 0], real[9] = True, True
    got = np.zeros((10, 4))
    got[:9, 0], got[9] = after["block/dw/kernel"][:, :, 0, c].ravel(), after["block/project/kernel"][0, 0, c, :]
    beta = np.full(10, step * shape)
    gamma = step * channel * np.sqrt(2)
    if method == "l0_sparse_group_lasso":
      best = brute_theta_leafwise(y, step * l0, beta, gamma, real)
      assert objective_theta_leafwise(got, y, step * l0, beta, gamma) - best < 1e-6
    else:  # closed form: soft threshold (ℓ1), leaf shrinks, one root shrink
      z = np.sign(y) * np.maximum(np.abs(y) - (step * l1 if method == "l1_sparse_group_lasso" else 0), 0)
      norms = np.linalg.norm(z, axis=1, keepdims=True)
      z = z * np.maximum(0, 1 - beta[:, None] / np.where(norms > 0, norms, 1))
      expected = z * max(0.0, 1 - gamma / max(np.linalg.norm(z), 1e-30))
      np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_adam_metric_takes_one_step_per_unit():
  """Per-coordinate steps: the unit's step is 1/mean(1/s) over its entries (the metric made constant on the unit)."""
  m = MobileBlockNet(nnx.Rngs(4))
  x = jnp.ones((2, 6, 6, 3))
  lam = 0.05
  reg = regularisers.group_lasso(channel=lam, neuron=lam).for_model(m, x)
  params = nnx.state(m, nnx.Param)
  rng = np.random.default_rng(0)
  steps = jax.tree.map(lambda v: jnp.asarray(rng.uniform(0.1, 1.0, v.shape), jnp.float32), params)
  paths = _paths_leaves(m)[0]
  y = dict(zip(paths, [np.asarray(v, np.float64) for v in jax.tree.leaves(params)]))
  s = dict(zip(paths, [np.asarray(v, np.float64) for v in jax.tree.leaves(steps)]))
  out = dict(zip(paths, [np.asarray(v, np.float64) for v in jax.tree.leaves(reg.prox(params, steps))]))
  for unit in reg.units.units:
    yu = np.concatenate([y[p].ravel()[i] for p, i in unit.items()])
    su = 1 / np.mean(np.concatenate([1 / s[p].ravel()[i] for p, i in unit.items()]))
    w = np.sqrt(_slices(unit, y))
    np.testing.assert_allclose(np.concatenate([out[p].ravel()[i] for p, i in unit.items()]),
                               max(0, 1 - su * lam * w / np.linalg.norm(yu)) * yu, rtol=1e-4, atol=1e-7)


# -------------------------------------------------------------------------- training & PALM ---


def _train(model, reg, x, y, steps=300, lr=0.05, opt=None, momentum=0.9):
  if opt is None:
    tx = transforms.with_prox(optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=momentum), reg)
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, x, y):
    def loss(model):
      logits = model(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    grads = nnx.grad(loss)(model)
    opt.update(model, grads)

  for _ in range(steps):
    step(model, opt, x, y)


def _zero_kernel_entries(model):
  return sum(int(np.sum(np.asarray(v) == 0)) for p, v in zip(*_paths_leaves(model)) if p.endswith("kernel"))


@pytest.mark.slow
def test_training_with_coupled_groups_removes_stream_channels_and_leaves_no_zero():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(32, 8, 8, 3)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 4, size=32))
  widths = {}
  for seed in (5, 7):  # random labels: units die and regrow as the fit moves, so shrink every 25 steps
    m = TwoStageResNet(nnx.Rngs(seed))
    reg = regularisers.group_lasso(neuron=1.0, channel=1.0).for_model(m, x[:2])
    tx = transforms.with_prox(optax.inject_hyperparams(optax.sgd)(learning_rate=0.05, momentum=0.9), reg)
    opt = nnx.Optimizer(m, tx, wrt=nnx.Param)
    for _ in range(12):
      m.train()
      _train(m, reg, x, y, steps=25, opt=opt)
      m.eval()
      small = surgery.shrink(m, x[:4])
      widths.setdefault(seed, []).append(small.stem.conv.kernel.shape[-1])
      assert _zero_kernel_entries(m) > 0 and _zero_kernel_entries(small) == 0  # every zero was a removable unit's
  assert min(min(w) for w in widths.values()) < 8, widths  # stream channels removed (per-layer groups: 0 of 8)


@pytest.mark.slow
def test_palm_merges_layers_a_unit_spans_into_one_block_and_runs():
  m = PlainResNet(nnx.Rngs(6))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 3)), jnp.float32)
  y = jnp.asarray([0, 1, 2, 3])
  reg = regularisers.l0_sparse_group_lasso(1e-3, neuron=0.05, channel=0.05, shape=0.01).for_model(m, x[:2])
  kernels = [layer.kernel_path for layer in surgery.trace(m, x).layers]
  blocks = reg.blocks([[k] for k in kernels])
  by_kernel = {k: i for i, b in enumerate(blocks) for k in b}
  first_stream = ["a1/kernel", "b1/kernel", "proj/kernel"]
  assert len({by_kernel[k] for k in first_stream}) == 1
  assert by_kernel["a2/kernel"] != by_kernel["a1/kernel"]
  assert sorted(k for b in blocks for k in b) == sorted(kernels)
  with pytest.raises(ValueError, match="whole units"):
    reg.prox_leaves(["conv"], [jnp.zeros((3, 3, 4, 4))], 0.1, paths=["a1/kernel"])
  step = palm.make_palm_step(m, reg, kernels, max_backtracks=20)
  before = dict(zip(*_paths_leaves(m)))
  loss, lip = step(m, x, y, 1.0)
  after = dict(zip(*_paths_leaves(m)))
  assert np.isfinite(float(loss)) and float(lip) >= 1.0
  assert any(not np.array_equal(before[k], after[k]) for k in first_stream)


def test_for_model_errors_and_element_wise_penalties():
  m = MobileBlockNet(nnx.Rngs(0))
  x = jnp.ones((2, 6, 6, 3))
  with pytest.raises(ValueError, match="no coupled form"):
    regularisers.group_lasso(channel=0.1, conv_grouping="output_filter").for_model(m, x)
  l1 = regularisers.l1(0.1).for_model(m, x)
  assert ("^block/dw/kernel$", "depthwise") in list(l1.rules)
  reg = regularisers.group_lasso(channel=0.1).for_model(m, x)
  other = MobileBlockNet(nnx.Rngs(0))
  other.block.project = nnx.Conv(12, 5, (1, 1), use_bias=False, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="built for"):
    reg.prox(nnx.state(other, nnx.Param), 0.1)


def test_depthwise_looking_kernels_without_rules_warn_naming_them():
  two = {"a": {"kernel": jnp.zeros((3, 3, 1, 4))}, "b": {"kernel": jnp.zeros((3, 3, 1, 4))}}
  with pytest.warns(UserWarning, match="a/kernel"):
    regularisers.group_lasso(channel=0.1).roles(two)
  import warnings

  with warnings.catch_warnings():
    warnings.simplefilter("error")  # a grayscale net's single first conv: no warning
    regularisers.group_lasso(channel=0.1).roles({"a": {"kernel": jnp.zeros((5, 5, 1, 4))}})
    m = MobileBlockNet(nnx.Rngs(0))
    regularisers.group_lasso(channel=0.1).for_model(m, jnp.ones((2, 6, 6, 3))).roles(nnx.state(m, nnx.Param))


def test_egl_writer_units_shrink_by_one_factor_with_sqrt_size():
  m = MobileBlockNet(nnx.Rngs(5))
  x = jnp.ones((2, 6, 6, 3))
  gamma, lam, step = 0.05, 0.1, 0.5
  reg = regularisers.elastic_group_lasso(gamma, lam).for_model(m, x)
  paths, leaves = _paths_leaves(m)
  y = dict(zip(paths, [np.asarray(v, np.float64) for v in leaves]))
  out = dict(zip(paths, [np.asarray(v, np.float64) for v in jax.tree.leaves(reg.prox(nnx.state(m, nnx.Param), step))]))
  for unit in reg.units.units:
    yu = np.concatenate([y[p].ravel()[i] for p, i in unit.items()]) / (1 + 2 * step * lam)
    t = step * gamma * np.sqrt(yu.size) / (1 + 2 * step * lam)
    np.testing.assert_allclose(np.concatenate([out[p].ravel()[i] for p, i in unit.items()]),
                               max(0, 1 - t / np.linalg.norm(yu)) * yu, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(out["fc/kernel"], y["fc/kernel"] / (1 + 2 * step * lam), rtol=1e-5)  # fixed: ridge


def test_degl_threshold_on_coupled_sets_removes_a_depthwise_chain():
  from mobileprune_jax.train import actions

  m = MobileBlockNet(nnx.Rngs(6))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 6, 6, 3)), jnp.float32)
  for path, select in (("block/expand/kernel", np.s_[..., 3]), ("block/dw/kernel", np.s_[..., 3])):
    var = variables_by_path(m)[path]
    k = np.asarray(var.get_value()).copy()
    k[select] *= 1e-4  # channel 3: both filters below the threshold
    var.set_value(jnp.asarray(k))
  per_layer = nnx.clone(m)
  assert actions.degl_threshold(per_layer, x, 1e-2, "fc/kernel")["degl_removed_units"] == 0  # coupled: left alone
  assert actions.degl_threshold(m, x, 1e-2, "fc/kernel", coupled=True)["degl_removed_units"] == 1
  small, report = surgery.shrink_with_report(m, x)
  assert small.block.dw.kernel.shape[-1] == 11 and small.block.project.kernel.shape[-2] == 11
  assert report.max_abs_diff < 1e-4


@pytest.mark.slow
def test_single_level_units_take_pi_and_agree_with_theta():
  """LeNet-5's flattened-channel units (16 dense rows, no leaf term) go through π; θ on the same tree reaches the
  same objective (float32 near-ties may pick supports one entry apart)."""
  m = models.create("lenet5", seed=1)
  x = jnp.ones((2, 28, 28, 1))
  l0, neuron, step = 2e-3, 0.05, 0.5
  reg = regularisers.l0_sparse_group_lasso(l0, neuron=neuron, channel=0.02, shape=0.01).for_model(m, x)
  paths, leaves = _paths_leaves(m)
  p = dict(zip(paths, [np.asarray(v) for v in leaves]))
  after = dict(zip(paths, [np.asarray(v) for v in jax.tree.leaves(reg.prox(nnx.state(m, nnx.Param), step))]))
  theta = jax.jit(tree_l0.theta_leafwise)
  units = [(p["fc1/kernel"][[(h * 4 + w) * 50 + c for h in range(4) for w in range(4)]],
            after["fc1/kernel"][[(h * 4 + w) * 50 + c for h in range(4) for w in range(4)]], 4.0) for c in range(50)]
  units += [(p["fc2/kernel"][j][None], after["fc2/kernel"][j][None], 1.0) for j in range(0, 500, 25)]
  a = step * l0
  for y, got, weight in units:  # dense readers only: the neuron coefficient, weight √(rows)
    g = step * neuron * weight
    ref = np.asarray(theta(jnp.asarray(y[None]), jnp.asarray([a], jnp.float32), jnp.zeros((1, len(y)), jnp.float32),
                           jnp.asarray([g], jnp.float32)))[0]
    obj = lambda z, y=y, g=g: (0.5 * np.sum((z - y.astype(np.float64)) ** 2) + a * np.count_nonzero(z)
                               + g * np.sqrt(np.sum(z.astype(np.float64) ** 2)))
    assert obj(got.astype(np.float64)) <= obj(ref.astype(np.float64)) + 1e-6
  # conv1 reads the image (a channel that stays): each tap across its 20 filters is a fixed tree with the shape
  # term only, solved in the same π bucket as fc2's rows (the narrower bucket is padded into the wider one)
  a, lam = step * l0, step * 0.01
  for h in range(5):
    for w in range(5):
      y, got = p["conv1/kernel"][h, w, 0], after["conv1/kernel"][h, w, 0]
      ref = np.asarray(prox.pi(jnp.asarray(y), lam, a))
      obj = lambda z, y=y: (0.5 * np.sum((z - y.astype(np.float64)) ** 2) + a * np.count_nonzero(z)
                            + lam * np.sqrt(np.sum(z.astype(np.float64) ** 2)))
      assert obj(got.astype(np.float64)) <= obj(ref.astype(np.float64)) + 1e-6


def test_blocks_spanning_two_components_join_them():
  """A block holding kernels of two coupled sets merges every block of either set (hand-made blocks)."""
  m = PlainResNet(nnx.Rngs(7))
  reg = regularisers.group_lasso(channel=0.1).for_model(m, jnp.ones((2, 8, 8, 3)))
  merged = reg.blocks([["a1/kernel"], ["a2/kernel", "b2/kernel"], ["b1/kernel"], ["proj/kernel"], ["fc/bias"]])
  # a1, b1, proj read the first stream; a2 and b2 are inner readers, joined here by hand into one block
  assert merged == [["a1/kernel", "b1/kernel", "proj/kernel"], ["a2/kernel", "b2/kernel"], ["fc/bias"]]


def test_old_per_layer_configs_keep_their_fingerprint():
  """coef.coupled=False is the behaviour before the key existed: a workdir started then still resumes."""
  from mobileprune_jax import config as config_lib
  from mobileprune_jax.train.loop import config_fingerprint

  cfg = config_lib.load_config("experiments/configs/quick.py")
  cfg.coef.coupled = False
  old = cfg.to_dict()
  del old["coef"]["coupled"]
  assert config_fingerprint(cfg) == config_fingerprint(config_lib.ml_collections.ConfigDict(old))
  cfg.coef.coupled = True
  assert config_fingerprint(cfg) != config_fingerprint(config_lib.ml_collections.ConfigDict(old))


class TokenNet(nnx.Module):
  """Embedding → attention (flax's) → MLP, plus a LinearGeneral with two output axes and an Einsum: layers whose
  parameter shapes do not say which axis they read."""

  def __init__(self, rngs):
    self.emb = nnx.Embed(50, 16, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=16, qkv_features=16, decode=False, rngs=rngs)
    self.ff1 = nnx.Linear(16, 32, rngs=rngs)
    self.split = nnx.LinearGeneral(32, (2, 8), rngs=rngs)
    self.flat = nnx.LinearGeneral(16, 16, rngs=rngs)
    self.mix = nnx.Einsum("bi,io->bo", (16, 16), (16,), rngs=rngs)
    self.out = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, t, train=False):
    h = self.emb(t)
    h = (h + self.attn(h)).mean(1)
    h = nnx.relu(self.split(nnx.relu(self.ff1(h)))).reshape(t.shape[0], -1)
    return self.out(nnx.relu(self.mix(nnx.relu(self.flat(h)))))


def test_embeddings_einsums_and_multi_axis_linear_layers_train_and_shrink_with_for_model():
  """Per-leaf inference cannot group them (it asks for a rule); with the model at hand their roles are known."""
  model = TokenNet(nnx.Rngs(0))
  t = jnp.asarray(np.random.default_rng(0).integers(0, 50, (8, 6)))
  y = jnp.arange(8) % 3
  with pytest.raises(ValueError, match="emb/embedding"):
    regularisers.group_lasso(neuron=0.1).roles(nnx.state(model, nnx.Param))
  roles = dict(zip(groups.leaf_paths(nnx.state(model, nnx.Param)),
                   groups.leaf_roles(nnx.state(model, nnx.Param), groups.rules_for_model(model))))
  assert [roles[p] for p in ("emb/embedding", "split/kernel", "split/bias", "mix/kernel", "mix/bias")] == ["none"] * 5
  assert (roles["flat/kernel"], roles["flat/bias"], roles["ff1/kernel"]) == ("dense", "bias", "dense")
  assert (roles["attn/query/kernel"], roles["attn/out/kernel"]) == ("heads_in", "heads_out")  # flax's LinearGenerals
  reg = regularisers.group_lasso(neuron=0.1).for_model(model, t)
  params = nnx.state(model, nnx.Param)
  traced = dict(zip(groups.leaf_paths(params), reg.roles(params)))  # the trace says which axis they read: units
  assert (traced["split/kernel"], traced["mix/kernel"], traced["split/bias"], traced["mix/bias"]) == (
      "conv", "dense", "none", "none")
  assert {"split/kernel", "mix/kernel"} <= set(reg.units.paths) and reg.reader_axes["split/kernel"] == 0
  unit_of_split_input = [u for u in reg.units.units if "split/kernel" in u]  # split's input j: its 16 outputs
  assert sorted(len(u["split/kernel"]) for u in unit_of_split_input) == [16] * 32
  _train(model, reg, t, y, steps=40, lr=0.1, momentum=0.0)
  assert not np.any(np.asarray(model.emb.embedding[...]) == 0)  # the table is not penalised
  dead = int(jnp.sum(jnp.all(model.out.kernel[...] == 0, axis=1)))  # mix's output units: the classifier's rows
  assert 0 < dead < 16
  small = surgery.shrink(model, t)
  assert small.mix.kernel.shape == (16, 16 - dead) and small.mix.bias.shape == (16 - dead,)  # Einsum's bias reshape
  assert small.emb.embedding.shape == (50, 16)  # every stream channel is still read (attention, ff1): the table stays
  np.testing.assert_allclose(np.asarray(small(t)), np.asarray(model(t)), atol=1e-5)


class SwiGLUNet(nnx.Module):
  """A pre-norm SwiGLU MLP block (RMSNorm, gate ⊙ up → down) on a residual stream: RMSNorm has a scale and no bias."""

  def __init__(self, rngs):
    self.emb = nnx.Linear(12, 16, rngs=rngs)
    self.norm = nnx.RMSNorm(16, rngs=rngs)
    self.gate = nnx.Linear(16, 48, rngs=rngs)
    self.up = nnx.Linear(16, 48, rngs=rngs)
    self.down = nnx.Linear(48, 16, rngs=rngs)
    self.head = nnx.Linear(16, 5, rngs=rngs)

  def __call__(self, x, train=False):
    h = self.emb(x)
    z = self.norm(h)
    h = h + self.down(nnx.silu(self.gate(z)) * self.up(z))
    return self.head(h.mean(1))


def test_rmsnorm_swiglu_blocks_train_and_shrink_with_for_model():
  """RMSNorm's lone scale is a normalisation parameter; a hidden unit is down's row, and gate's and up's columns go with it."""
  model = SwiGLUNet(nnx.Rngs(0))
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(8, 6, 12)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 5, 8))
  params = nnx.state(model, nnx.Param)
  assert dict(zip(groups.leaf_paths(params), groups.leaf_roles(params)))["norm/scale"] == "none"  # from the params alone
  reg = regularisers.group_lasso(neuron=0.16).for_model(model, x)
  _train(model, reg, x, y, steps=60, lr=0.1, momentum=0.0)
  assert not np.any(np.asarray(model.norm.scale[...]) == 0)  # not penalised
  dead = np.all(np.asarray(model.down.kernel[...]) == 0, axis=1)  # hidden units nobody reads
  assert 0 < dead.sum() < 48
  small = surgery.shrink(model, x)
  assert small.down.kernel.shape[0] <= 48 - dead.sum() and small.gate.kernel.shape[1] == small.down.kernel.shape[0]
  assert small.up.kernel.shape[1] == small.down.kernel.shape[0]
  assert small.norm.scale.shape == (16,)  # RMSNorm reads every stream channel: the stream stays
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-5)


class RawParamNet(nnx.Module):
  """Custom parameters used directly between ordinary layers: a kernel (x @ self.w) and a per-unit scale."""

  def __init__(self, rngs):
    self.w = nnx.Param(jax.random.normal(rngs.params(), (12, 32)) * 0.3)
    self.c = nnx.Param(jnp.full((32,), 0.1))
    self.v = nnx.Param(jnp.full((32,), 1.5))
    self.fc = nnx.Linear(32, 32, rngs=rngs)
    self.out = nnx.Linear(32, 5, rngs=rngs)

  def __call__(self, x, train=False):
    return self.out(nnx.relu(self.fc(nnx.relu((x @ self.w + self.c) * self.v))))


def test_for_model_gives_custom_kernels_their_traced_role_and_warns_once_about_the_rest():
  model = RawParamNet(nnx.Rngs(0))
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(16, 12)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 5, 16))
  params = nnx.state(model, nnx.Param)
  with pytest.raises(ValueError, match="parameter '[cvw]' of shape"):  # from the params alone: a rule is needed
    regularisers.group_lasso(neuron=0.1).roles(params)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # w is a plain (in, out) dense kernel in the trace (role "dense"), c is added to
    reg = regularisers.group_lasso(neuron=0.16).for_model(model, x)  # its outputs entry by entry (role "bias"), v
  roles = dict(zip(groups.leaf_paths(params), reg.roles(params)))  # multiplies them (a scale, like a norm's: "none")
  assert roles["w"] == "dense" and roles["c"] == "bias" and roles["v"] == "none"
  w0 = np.asarray(model.w[...])
  _train(model, reg, x, y, steps=60, lr=0.1, momentum=0.0)
  assert not np.any(np.asarray(model.w[...]) == 0) and not np.allclose(np.asarray(model.w[...]), w0)  # reads inputs
  dead = int(np.sum(np.all(np.asarray(model.fc.kernel[...]) == 0, axis=1)))  # w's output units nobody reads
  assert 0 < dead < 32
  small = surgery.shrink(model, x)
  assert small.w.shape[1] <= 32 - dead and small.w.shape[1] == small.fc.kernel.shape[0] == small.v.shape[0] \
      == small.c.shape[0]
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-5)


class ChannelVectors(nnx.Module):
  """Per-channel parameters besides the layers': a temperature, a shift after the activation, a cap."""

  def __init__(self, rngs):
    self.fc = nnx.Linear(6, 16, rngs=rngs)
    self.temperature = nnx.Param(jnp.full((16,), 2.0))
    self.shift = nnx.Param(jnp.full((16,), 0.1))
    self.cap = nnx.Param(jnp.full((16,), 3.0))
    self.out = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(jnp.minimum(nnx.relu(self.fc(x) / self.temperature) + self.shift, self.cap))


def test_channel_vectors_are_unpenalised_scales_or_biases_without_a_warning():
  model = ChannelVectors(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 6)), jnp.float32)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    reg = regularisers.group_lasso(neuron=0.5).for_model(model, x)
  params = nnx.state(model, nnx.Param)
  roles = dict(zip(groups.leaf_paths(params), reg.roles(params)))
  assert roles["temperature"] == roles["cap"] == "none"
  assert roles["shift"] == roles["fc/bias"] == "bias"  # added to fc's channels entry by entry, after the ReLU
  new = reg.prox(params, 1.0)
  for name in ("temperature", "cap"):
    np.testing.assert_array_equal(np.asarray(new[name][...]), np.asarray(params[name][...]))
  model.out.kernel[...] = model.out.kernel[...].at[jnp.asarray([2, 9])].set(0)  # channels 2 and 9 unread
  small = surgery.shrink(model, x)
  assert small.fc.kernel.shape == (6, 14) and small.temperature.shape == small.shift.shape == small.cap.shape == (14,)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-6)


class CustomConvNet(nnx.Module):
  """Convs and a dense layer written with lax / @ on raw parameters, in the library's layout (HWIO) and in
  PyTorch's (OIHW, (out, in) used as ``x @ w.T``), or as ``nnx`` layers holding the same weights (``library=True``)."""

  def __init__(self, rngs, library=False):
    self.library = library
    if library:
      self.c1, self.c2 = nnx.Conv(3, 8, (3, 3), rngs=rngs), nnx.Conv(8, 6, (3, 3), rngs=rngs)
      self.fc = nnx.Linear(6, 5, rngs=rngs)
    else:
      self.k1 = nnx.Param(jax.random.normal(rngs.params(), (3, 3, 3, 8)) * 0.3)
      self.k2 = nnx.Param(jax.random.normal(rngs.params(), (6, 8, 3, 3)) * 0.3)  # OIHW: PyTorch's layout
      self.wt = nnx.Param(jax.random.normal(rngs.params(), (5, 6)) * 0.3)  # (out, in): PyTorch's layout

  def __call__(self, x):
    if self.library:
      return self.fc(nnx.relu(self.c2(nnx.relu(self.c1(x)))).mean(axis=(1, 2)))
    conv = lambda h, k, kind: jax.lax.conv_general_dilated(h, k, (1, 1), "SAME",
                                                            dimension_numbers=("NHWC", kind, "NHWC"))
    h = nnx.relu(conv(nnx.relu(conv(x, self.k1[...], "HWIO")), self.k2[...], "OIHW"))
    return h.mean(axis=(1, 2)) @ self.wt[...].T


def test_custom_convs_are_penalised_like_the_library_layers_with_the_same_weights():
  custom, library = CustomConvNet(nnx.Rngs(0)), CustomConvNet(nnx.Rngs(0), library=True)
  library.c1.kernel[...], library.c2.kernel[...] = custom.k1[...], custom.k2[...].transpose(2, 3, 1, 0)
  library.fc.kernel[...] = custom.wt[...].T
  for layer in (library.c1, library.c2, library.fc):
    layer.bias[...] = jnp.zeros_like(layer.bias[...])
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
  np.testing.assert_allclose(np.asarray(custom(x)), np.asarray(library(x)), atol=1e-5)
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # OIHW and (out, in) kernels are partitioned by the trace's axes: nothing unseen
    reg = regularisers.group_lasso(neuron=1.2, channel=4.4).for_model(custom, x)
    ref = regularisers.group_lasso(neuron=1.2, channel=4.4).for_model(library, x)
  assert reg.reader_axes == {"k2": 1, "wt": 1} and ref.reader_axes is None  # for the budget landing's spare unit
  assert regularisers.l1(0.1).for_model(custom, x).reader_axes == {"k2": 1, "wt": 1}  # element-wise: the same
  new = reg.prox(nnx.state(custom, nnx.Param), 0.5)
  expected = ref.prox(nnx.state(library, nnx.Param), 0.5)  # k2 reads c1's channels: one unit each
  np.testing.assert_allclose(np.asarray(new["k2"][...]).transpose(2, 3, 1, 0),
                             np.asarray(expected["c2"]["kernel"][...]), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(new["wt"][...]).T, np.asarray(expected["fc"]["kernel"][...]), rtol=1e-6)
  zero = np.asarray(new["wt"][...]) == 0
  assert np.all(zero.all(axis=0) | ~zero.any(axis=0)) and 0 < zero.all(axis=0).sum() < 6  # whole input columns
  np.testing.assert_array_equal(np.asarray(new["k1"][...]), np.asarray(custom.k1[...]))  # reads the input: no unit
  assert 0 < int(np.sum(np.all(np.asarray(new["k2"][...]) == 0, axis=(0, 2, 3)))) < 8


class GRUNet(nnx.Module):
  """A GRU (flax's nnx.RNN scan) between dense layers: the trace cannot enter the scan."""

  def __init__(self, rngs):
    self.inp = nnx.Linear(6, 16, rngs=rngs)
    self.rnn = nnx.RNN(nnx.GRUCell(16, 16, rngs=rngs))
    self.hidden = nnx.Linear(16, 32, rngs=rngs)
    self.out = nnx.Linear(32, 5, rngs=rngs)

  def __call__(self, x, train=False):
    h = self.rnn(nnx.relu(self.inp(x)))[:, -1]
    return self.out(nnx.relu(self.hidden(h)))


def test_a_gru_is_penalised_through_its_hidden_units_and_its_state_shrinks():
  """The trace enters nnx.RNN's scan: hidden unit j is one unit, the recurrent kernel's row j and the next layer's
  row j (the GRU's fused (16, 48) kernels are split in its three gates by the trace)."""
  model = GRUNet(nnx.Rngs(0))
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.normal(size=(8, 10, 6)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 5, 8))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # every kernel is seen: nothing to warn about
    reg = regularisers.group_lasso(neuron=0.22).for_model(model, x)
  params = nnx.state(model, nnx.Param)
  roles = dict(zip(groups.leaf_paths(params), reg.roles(params)))
  assert roles["rnn/cell/dense_h/kernel"] == roles["rnn/cell/dense_i/kernel"] == "dense"
  row = lambda j, width: list(range(j * width, (j + 1) * width))
  expected = [{"rnn/cell/dense_h/kernel": row(j, 48), "hidden/kernel": row(j, 32)} for j in range(16)]
  units = [{p: sorted(np.asarray(i).tolist()) for p, i in unit.items()} for unit in reg.units.units]
  assert all(unit in units for unit in expected)
  _train(model, reg, x, y, steps=60, lr=0.1, momentum=0.0)
  h = np.asarray(model.rnn.cell.dense_h.kernel[...])
  dead = [j for j in range(16) if not h[j].any() and not np.asarray(model.hidden.kernel[...])[j].any()]
  assert 0 < len(dead) < 16, len(dead)
  small = surgery.shrink(model, x)
  assert small.rnn.cell.hidden_features == small.rnn.cell.dense_h.kernel.shape[0] <= 16 - len(dead)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-5)


class TorchDepthwise(nnx.Module):
  """A MobileNet block in PyTorch's layout: OIHW kernels, NCHW activations, the depthwise group count from the
  kernel's shape."""

  def __init__(self, rngs):
    self.expand = nnx.Param(jax.random.normal(rngs.params(), (6, 3, 1, 1)) * 0.5)
    self.dw = nnx.Param(jax.random.normal(rngs.params(), (6, 1, 3, 3)) * 0.5)
    self.project = nnx.Param(jax.random.normal(rngs.params(), (4, 6, 1, 1)) * 0.5)
    self.fc = nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x):
    conv = lambda h, w, g=1: jax.lax.conv_general_dilated(h, w, (1, 1), "SAME", feature_group_count=g,
                                                          dimension_numbers=("NCHW", "OIHW", "NCHW"))
    h = nnx.relu(conv(nnx.relu(conv(x, self.expand[...])), self.dw[...], self.dw.shape[0]))
    return self.fc(conv(h, self.project[...]).mean(axis=(2, 3)))


def test_a_depthwise_block_in_pytorchs_layout_is_one_unit_per_channel_and_shrinks():
  model = TorchDepthwise(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3, 6, 6)), jnp.float32)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    reg = regularisers.group_lasso(neuron=0.1, channel=0.1).for_model(model, x)
  params = nnx.state(model, nnx.Param)
  roles = dict(zip(groups.leaf_paths(params), reg.roles(params)))
  assert roles["dw"] == roles["project"] == roles["expand"] == "conv" and reg.reader_axes["dw"] == 0
  # the expand output channel c: the depthwise filter c (9 taps) with the project kernel's input column c (4 filters)
  expected = [{"dw": list(range(9 * c, 9 * c + 9)), "project": [6 * o + c for o in range(4)]} for c in range(6)]
  units = [{p: sorted(np.asarray(i).tolist()) for p, i in unit.items()} for unit in reg.units.units]
  assert all(unit in units for unit in expected)
  model.dw[...] = model.dw[...].at[jnp.asarray([1, 4])].set(0)  # dead filters: their channels go everywhere
  small = surgery.shrink(model, x)
  assert small.expand.shape == (4, 3, 1, 1) and small.dw.shape == (4, 1, 3, 3) and small.project.shape == (4, 4, 1, 1)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model(x)), atol=1e-6)
