"""Surgery on models written the way users write them: standard pools, depthwise convs (MobileNet),
squeeze-and-excitation, attention. Expected sizes are computed by hand from the planted dead
channels; a brute-force check on random models looks for any channel the planner missed.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mobileprune_jax import metrics, regularisers, surgery

TOL = 1e-5


def _get(var):
  return np.asarray(var.get_value()).copy()


def _set(var, value):
  var.set_value(jnp.asarray(value, var.get_value().dtype))


def _kill_filters(conv, channels, bn=None):
  """Output filters that produce exactly zero: zero weights and bias (and a zero BatchNorm shift)."""
  k = _get(conv.kernel)
  k[..., channels] = 0
  _set(conv.kernel, k)
  if conv.bias is not None:
    b = _get(conv.bias)
    b[channels] = 0
    _set(conv.bias, b)
  if bn is not None:
    for var in (bn.mean, bn.bias):
      v = _get(var)
      v[channels] = 0
      _set(var, v)


def _unread(kernel_var, channels, axis=-2):
  """Nothing reads these input channels / rows."""
  k = _get(kernel_var)
  index = [slice(None)] * k.ndim
  index[axis] = channels
  k[tuple(index)] = 0
  _set(kernel_var, k)


def _params(model):
  return surgery.count_params(model)


def _shrink(model, x, expected_params):
  new, report = surgery.shrink_with_report(model, x)
  assert report.max_abs_diff <= TOL, report
  assert surgery.max_output_diff(model, new, x, n=3, seed=7) <= TOL
  assert _params(new) == expected_params, f"{_params(new)} != {expected_params}\n{report}"
  return new, report


def _randomize_bn(model, rng):
  for _, node in nnx.iter_graph(model):
    if isinstance(node, nnx.BatchNorm):
      for var in (node.mean, node.bias, node.scale):
        _set(var, rng.normal(size=var.shape) * 0.5 + (1.0 if var is node.scale else 0.0))
      _set(node.var, rng.uniform(0.5, 2.0, size=node.var.shape))


# ---------------------------------------------------------------- the NNX tutorial CNN ---


class TutorialCNN(nnx.Module):
  """Flax's NNX MNIST tutorial model (avg_pool via functools.partial)."""

  def __init__(self, *, rngs):
    self.conv1 = nnx.Conv(1, 32, kernel_size=(3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, kernel_size=(3, 3), rngs=rngs)
    self.avg_pool = functools.partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
    self.linear1 = nnx.Linear(3136, 256, rngs=rngs)
    self.linear2 = nnx.Linear(256, 10, rngs=rngs)

  def __call__(self, x):
    x = self.avg_pool(nnx.relu(self.conv1(x)))
    x = self.avg_pool(nnx.relu(self.conv2(x)))
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.linear1(x))
    return self.linear2(x)


def test_tutorial_cnn_with_avg_pool():
  m = TutorialCNN(rngs=nnx.Rngs(0))
  _kill_filters(m.conv1, [0, 5, 9, 30])  # 4 dead conv1 channels
  _kill_filters(m.conv2, list(range(0, 64, 4)))  # 16 dead conv2 channels
  _unread(m.linear2.kernel, list(range(100)), axis=0)  # 100 linear1 units read by nothing
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 28, 28, 1)), jnp.float32)
  c1, c2, u = 28, 48, 156
  expected = (9 * c1 + c1) + (9 * c1 * c2 + c2) + (49 * c2 * u + u) + (u * 10 + 10)
  new, _ = _shrink(m, x, expected)
  assert new.conv2.kernel.shape == (3, 3, 28, 48) and new.linear1.kernel.shape == (49 * 48, 156)


# ------------------------------------------------------------ pools with and without padding ---


class PoolNet(nnx.Module):
  def __init__(self, pool, rngs):
    self.pool = pool
    self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(8, 6, (3, 3), padding="VALID", rngs=rngs)
    self.head = nnx.Linear(6, 4, rngs=rngs)

  def __call__(self, x):
    x = self.pool(nnx.relu(self.conv1(x)))
    x = nnx.relu(self.conv2(x))
    return self.head(jnp.max(x, axis=(1, 2)))  # global max pool


POOLS = {
    "max SAME 3x3/2": functools.partial(nnx.max_pool, window_shape=(3, 3), strides=(2, 2), padding="SAME"),
    "max VALID 2x2": functools.partial(nnx.max_pool, window_shape=(2, 2), strides=(2, 2)),
    "avg SAME 3x3/1": functools.partial(nnx.avg_pool, window_shape=(3, 3), strides=(1, 1), padding="SAME"),
    "avg VALID 2x2": functools.partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2)),
    "lax sum pool": lambda x: jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "SAME"),
    "explicit zero pad": lambda x: jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))),
}


@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.slow
def test_pools_keep_channels(pool):
  m = PoolNet(POOLS[pool], nnx.Rngs(1))
  _kill_filters(m.conv1, [1, 2, 7])
  _unread(m.head.kernel, [0, 4], axis=0)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 12, 12, 3)), jnp.float32)
  expected = (27 * 5 + 5) + (9 * 5 * 4 + 4) + (4 * 4 + 4)
  _shrink(m, x, expected)


# ------------------------------------------------------------- max pool after a concat ---


class ConcatPoolNet(nnx.Module):
  def __init__(self, rngs):
    self.a = nnx.Conv(3, 4, (3, 3), use_bias=False, rngs=rngs)
    self.b = nnx.Conv(3, 4, (5, 5), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.conv = nnx.Conv(8, 8, (3, 3), rngs=rngs)
    self.fc = nnx.Linear(4 * 4 * 8, 5, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.bn(jnp.concatenate([self.a(x), self.b(x)], axis=-1)))
    x = nnx.max_pool(x, (2, 2), (2, 2))
    x = nnx.relu(x + self.conv(x))  # residual add
    return self.fc(x.reshape(x.shape[0], -1))  # NHWC flatten


def test_max_pool_after_concat_with_residual_and_flatten():
  m = ConcatPoolNet(nnx.Rngs(2))
  _randomize_bn(m, np.random.default_rng(2))
  k_a, k_b = _get(m.a.kernel), _get(m.b.kernel)
  k_a[..., 1], k_b[..., 2] = 0, 0  # concat channels 1 and 6 are dead ...
  _set(m.a.kernel, k_a)
  _set(m.b.kernel, k_b)
  for var in (m.bn.mean, m.bn.bias):
    v = _get(var)
    v[[1, 6]] = 0
    _set(var, v)
  _kill_filters(m.conv, [1, 6])  # ... and so is what the residual branch adds to them
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 8, 8, 3)), jnp.float32)
  expected = 27 * 3 + 75 * 3 + 2 * 6 + (9 * 6 * 6 + 6) + (16 * 6 * 5 + 5)
  _shrink(m, x, expected)


# ------------------------------------------------------------------------- MobileNets ---


class InvertedResidual(nnx.Module):
  """MobileNetV2's block: expand 1×1 → depthwise 3×3 → project 1×1, BN, ReLU6, residual add."""

  def __init__(self, cin, cout, expand, stride, rngs):
    hidden = cin * expand
    self.expand = nnx.Conv(cin, hidden, (1, 1), use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(hidden, rngs=rngs)
    self.dw = nnx.Conv(hidden, hidden, (3, 3), strides=stride, feature_group_count=hidden, use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(hidden, rngs=rngs)
    self.project = nnx.Conv(hidden, cout, (1, 1), use_bias=False, rngs=rngs)
    self.bn3 = nnx.BatchNorm(cout, rngs=rngs)
    self.residual = stride == 1 and cin == cout

  def __call__(self, x):
    h = jax.nn.relu6(self.bn1(self.expand(x)))
    h = jax.nn.relu6(self.bn2(self.dw(h)))
    h = self.bn3(self.project(h))
    return x + h if self.residual else h


class MobileNetV2Stack(nnx.Module):
  def __init__(self, rngs):
    self.stem = nnx.Conv(3, 8, (3, 3), strides=2, use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.block1 = InvertedResidual(8, 8, 4, 1, rngs)
    self.block2 = InvertedResidual(8, 12, 4, 2, rngs)
    self.head = nnx.Linear(12, 10, rngs=rngs)

  def __call__(self, x):
    x = jax.nn.relu6(self.bn(self.stem(x)))
    x = self.block2(self.block1(x))
    return self.head(jnp.mean(x, axis=(1, 2)))


def _block_params(cin, hidden, cout):
  return cin * hidden + 2 * hidden + 9 * hidden + 2 * hidden + hidden * cout + 2 * cout


def test_mobilenet_v2_blocks_shrink_expand_depthwise_project_together():
  m = MobileNetV2Stack(nnx.Rngs(3))
  _randomize_bn(m, np.random.default_rng(3))
  before = _params(m)
  _unread(m.block1.project.kernel, list(range(0, 32, 3)))  # 11 hidden channels of block 1 read by nothing
  _kill_filters(m.block2.expand, [0, 1, 2, 3, 4], bn=m.block2.bn1)  # 5 dead expand channels of block 2 ...
  k = _get(m.block2.dw.kernel)  # ... whose depthwise output is zero: their filters
  k[..., [0, 1, 2, 3, 4]] = 0
  _set(m.block2.dw.kernel, k)
  for var in (m.block2.bn2.mean, m.block2.bn2.bias):
    v = _get(var)
    v[[0, 1, 2, 3, 4]] = 0
    _set(var, v)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 16, 16, 3)), jnp.float32)
  stem = 27 * 8 + 2 * 8
  expected = stem + _block_params(8, 21, 8) + _block_params(8, 27, 12) + (12 * 10 + 10)
  assert before == stem + _block_params(8, 32, 8) + _block_params(8, 32, 12) + 130
  new, report = _shrink(m, x, expected)
  assert new.block1.dw.kernel.shape == (3, 3, 1, 21) and new.block1.dw.feature_group_count == 21
  assert new.block2.dw.in_features == 27 and new.block2.bn2.num_features == 27


class DepthwiseSeparable(nnx.Module):
  def __init__(self, cin, cout, rngs):
    self.dw = nnx.Conv(cin, cin, (3, 3), feature_group_count=cin, use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(cin, rngs=rngs)
    self.pw = nnx.Conv(cin, cout, (1, 1), use_bias=False, rngs=rngs)
    self.bn2 = nnx.BatchNorm(cout, rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.bn2(self.pw(nnx.relu(self.bn1(self.dw(x))))))


class MobileNetV1Stack(nnx.Module):
  def __init__(self, rngs):
    self.stem = nnx.Conv(3, 8, (3, 3), use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(8, rngs=rngs)
    self.b1 = DepthwiseSeparable(8, 16, rngs)
    self.b2 = DepthwiseSeparable(16, 16, rngs)
    self.head = nnx.Linear(16, 5, rngs=rngs)

  def __call__(self, x):
    x = self.b2(self.b1(nnx.relu(self.bn(self.stem(x)))))
    return self.head(jnp.mean(x, axis=(1, 2)))


def test_mobilenet_v1_depthwise_separable():
  m = MobileNetV1Stack(nnx.Rngs(4))
  _randomize_bn(m, np.random.default_rng(4))
  _unread(m.b2.pw.kernel, [0, 3, 4, 10, 15])  # b1.pw channels (= b2's depthwise channels) read by nothing
  _kill_filters(m.stem, [2, 5], bn=m.bn)  # stem channels that are zero ...
  k = _get(m.b1.dw.kernel)
  for var in (m.b1.bn1.mean, m.b1.bn1.bias):  # ... stay zero through b1's depthwise + BN
    v = _get(var)
    v[[2, 5]] = 0
    _set(var, v)
  _set(m.b1.dw.kernel, k)
  x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 10, 10, 3)), jnp.float32)
  stem = 27 * 6 + 12
  b1 = 9 * 6 + 12 + 6 * 11 + 22
  b2 = 9 * 11 + 22 + 11 * 16 + 32
  _shrink(m, x, stem + b1 + b2 + 16 * 5 + 5)


class GroupedNet(nnx.Module):
  def __init__(self, rngs):
    self.a = nnx.Conv(3, 8, (1, 1), rngs=rngs)
    self.g = nnx.Conv(8, 8, (3, 3), feature_group_count=2, rngs=rngs)  # 2 groups of 4 channels
    self.m = nnx.Conv(8, 16, (3, 3), feature_group_count=8, rngs=rngs)  # depthwise with multiplier 2
    self.head = nnx.Linear(16, 2, rngs=rngs)

  def __call__(self, x):
    return self.head(jnp.mean(self.m(nnx.relu(self.g(nnx.relu(self.a(x))))), axis=(1, 2)))


def test_grouped_convs_are_cut_by_whole_groups():
  m = GroupedNet(nnx.Rngs(5))
  x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 6, 6, 3)), jnp.float32)
  _unread(m.head.kernel, list(range(8)), axis=0)  # m's groups 0-3 (outputs 0-7) are read by nothing: they go,
  # with their inputs = g's outputs 0-3 = g's whole group 0, whose inputs are a's outputs 0-3
  expected = (3 * 4 + 4) + (9 * 4 * 4 + 4) + (9 * 1 * 8 + 8) + (8 * 2 + 2)
  new, _ = _shrink(m, x, expected)
  assert new.g.feature_group_count == 1 and new.g.kernel.shape == (3, 3, 4, 4)
  assert new.m.feature_group_count == 4 and new.m.kernel.shape == (3, 3, 1, 8)


def test_half_a_group_dead_keeps_the_group():
  m = GroupedNet(nnx.Rngs(6))
  x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 6, 6, 3)), jnp.float32)
  _unread(m.head.kernel, [0, 1, 2, 3, 4, 5], axis=0)  # m's groups 0-2 unread, but g's group 0 also feeds m's group 3
  new, report = surgery.shrink_with_report(m, x)
  assert report.params_after == report.params_before and report.max_abs_diff <= TOL


# ------------------------------------------------------------------ squeeze-and-excitation ---


class SENet(nnx.Module):
  def __init__(self, rngs):
    self.conv1 = nnx.Conv(3, 16, (3, 3), rngs=rngs)
    self.squeeze = nnx.Linear(16, 4, rngs=rngs)
    self.excite = nnx.Linear(4, 16, rngs=rngs)
    self.conv2 = nnx.Conv(16, 8, (3, 3), rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    x = nnx.relu(self.conv1(x))
    gate = nnx.sigmoid(self.excite(nnx.relu(self.squeeze(jnp.mean(x, axis=(1, 2))))))
    x = x * gate[:, None, None, :]
    x = nnx.relu(self.conv2(x))
    return self.head(jnp.mean(x, axis=(1, 2)))


def test_squeeze_and_excitation_gate_is_cut_with_its_channel():
  m = SENet(nnx.Rngs(6))
  _kill_filters(m.conv1, [0, 7, 8])  # dead channels: their gates (excite outputs) go too
  _unread(m.conv2.kernel, [3])  # a live channel that conv2 does not read ...
  _unread(m.squeeze.kernel, [3], axis=0)  # ... nor the squeeze (its pool feeds every gate): it goes with its gate
  x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 8, 8, 3)), jnp.float32)
  c = 12
  expected = (27 * c + c) + (c * 4 + 4) + (4 * c + c) + (9 * c * 8 + 8) + (8 * 3 + 3)
  new, _ = _shrink(m, x, expected)
  assert new.excite.kernel.shape == (4, 12)


# --------------------------------------------------------------------------- attention ---


class ViTBlock(nnx.Module):
  def __init__(self, rngs):
    self.ln = nnx.LayerNorm(32, rngs=rngs)
    self.ln2 = nnx.LayerNorm(32, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=4, in_features=32, qkv_features=32, decode=False, rngs=rngs)
    self.mlp1 = nnx.Linear(32, 64, rngs=rngs)
    self.mlp2 = nnx.Linear(64, 32, rngs=rngs)
    self.head = nnx.Linear(32, 5, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(self.ln(x))
    x = x + self.mlp2(nnx.gelu(self.mlp1(self.ln2(x))))
    return self.head(jnp.mean(x, axis=1))


def test_attention_heads_are_removed_whole():
  m = ViTBlock(nnx.Rngs(7))
  out = _get(m.attn.out.kernel)
  out[2] = 0  # head 2's output is read by nothing
  _set(m.attn.out.kernel, out)
  v, vb = _get(m.attn.value.kernel), _get(m.attn.value.bias)
  v[:, 1, :], vb[1] = 0, 0  # head 1's values are zero: its output is zero
  _set(m.attn.value.kernel, v)
  _set(m.attn.value.bias, vb)
  q = _get(m.attn.query.kernel)
  q[:, 0, :3] = 0  # part of head 0's queries: not a whole head, nothing to cut
  _set(m.attn.query.kernel, q)
  _unread(m.mlp2.kernel, list(range(20)))  # 20 hidden MLP units read by nothing
  x = jnp.asarray(np.random.default_rng(7).normal(size=(2, 6, 32)), jnp.float32)
  heads = 2
  attention = 3 * (32 * heads * 8 + heads * 8) + heads * 8 * 32 + 32
  expected = 2 * 64 + attention + (32 * 44 + 44) + (44 * 32 + 32) + (32 * 5 + 5)
  new, _ = _shrink(m, x, expected)
  assert new.attn.num_heads == 2 and new.attn.query.kernel.shape == (32, 2, 8)
  assert new.attn.qkv_features == 16 and new.attn.out.kernel.shape == (2, 8, 32)


def test_layer_norm_over_channels_pins_them_with_a_note():
  m = ViTBlock(nnx.Rngs(8))
  _kill_filters(m.mlp2, [0, 1])  # residual-stream channels: LayerNorm mixes them, so they stay
  report = surgery.plan(m, jnp.ones((1, 6, 32)))
  assert any("across channels" in n and "LayerNorm" in n for n in report.notes), report.notes


# ---------------------------------------------------- brute-force minimality on random nets ---


class SeqNet(nnx.Module):
  """conv / conv+BN / depthwise+BN / max or avg pool stages, global pool or flatten, dense head."""

  def __init__(self, spec, flatten, rngs):
    self.spec, self.flatten = spec, flatten
    layers, c, side = [], 3, 8
    for kind, width in spec:
      if kind in ("conv", "convbn"):
        layers.append(nnx.data({"conv": nnx.Conv(c, width, (3, 3), use_bias=kind == "conv", rngs=rngs),
                                "bn": nnx.BatchNorm(width, rngs=rngs)}))
        c = width
      elif kind == "dw":
        layers.append(nnx.data({"conv": nnx.Conv(c, c, (3, 3), feature_group_count=c, rngs=rngs),
                                "bn": nnx.BatchNorm(c, rngs=rngs)}))
      else:
        layers.append(nnx.data({}))
        side = -(-side // 2)
    self.layers = nnx.List(layers)
    self.fc = nnx.Linear(side * side * c if flatten else c, 4, rngs=rngs)

  def __call__(self, x):
    return self.raw_outputs(x)[-1]

  def raw_outputs(self, x):
    """Every conv's and the head's output before BatchNorm / activation (what a reader computes)."""
    raw = []
    for (kind, _), layer in zip(self.spec, self.layers):
      if kind in ("conv", "convbn", "dw"):
        raw.append(layer["conv"](x))
        x = nnx.relu(raw[-1]) if kind == "conv" else nnx.relu(layer["bn"](raw[-1]))
      elif kind == "maxpool":
        x = nnx.max_pool(x, (3, 3), (2, 2), padding="SAME")
      elif kind == "avgpool":
        x = nnx.avg_pool(x, (2, 2), (2, 2), padding="SAME")
    x = x.reshape(x.shape[0], -1) if self.flatten else jnp.mean(x, axis=(1, 2))
    return raw + [self.fc(x)]


def _random_seq(seed):
  rng = np.random.default_rng(seed)
  spec = [("conv", int(rng.integers(3, 7)))]
  pools = 0
  for _ in range(int(rng.integers(2, 5))):
    kind = ["conv", "convbn", "dw", "maxpool", "avgpool"][rng.integers(5)]
    if kind.endswith("pool"):
      if pools == 2:
        kind = "dw"
      pools += kind.endswith("pool")
    spec.append((kind, int(rng.integers(3, 7))))
  m = SeqNet(spec, bool(rng.integers(2)), nnx.Rngs(seed))
  for _, node in nnx.iter_graph(m):
    if isinstance(node, nnx.BatchNorm):
      # shifts: zero (a dead filter stays exactly zero) or upward (a dead filter gives a positive constant,
      # which is read; upward so that a ReLU after a live filter is not dead on every probe by chance)
      zero_shift = rng.random(node.mean.shape) < 0.5
      _set(node.mean, np.where(zero_shift, 0.0, -np.abs(rng.normal(size=node.mean.shape))))
      _set(node.bias, np.where(zero_shift, 0.0, np.abs(rng.normal(size=node.bias.shape))))
    if isinstance(node, (nnx.Conv, nnx.Linear)):
      k = _get(node.kernel)
      if k.shape[-2] > 1:
        k[..., rng.random(k.shape[-2]) < 0.3, :] = 0
      k[..., rng.random(k.shape[-1]) < 0.3] = 0
      _set(node.kernel, k)
      if node.bias is not None:
        b = _get(node.bias)
        b[rng.random(b.shape) < 0.6] = 0
        _set(node.bias, b)
  return m


def _readers(model):
  """(producer conv, the kernel that reads its channels next, how it indexes them, index of the
  reader's output in ``raw_outputs``) for SeqNet (depthwise stages and pools in between are per channel)."""
  out, pending, raw_index = [], None, -1
  for (kind, _), layer in zip(model.spec, model.layers):
    if kind in ("conv", "convbn", "dw"):
      raw_index += 1
    if kind in ("conv", "convbn"):
      if pending is not None:
        out.append((pending, layer["conv"].kernel, "conv", raw_index))
      pending = layer["conv"]
  out.append((pending, model.fc.kernel, "flatten" if model.flatten else "dense", raw_index + 1))
  return out


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.slow
def test_no_removable_channel_is_left_behind(seed):
  """Brute force: zero every weight that reads one remaining channel (which also drops the depthwise
  filters and pools between producer and reader); if the reader's output does not move on random
  inputs, the channel was removable and the planner missed it.

  The planner proves zeros and constants, not signs: a channel that is zero only because a ReLU
  follows a filter that is negative on every (non-negative) input it gets is kept. Such channels
  are zero on every probe; they are skipped here and must stay rare."""
  m = _random_seq(seed)
  x = jnp.asarray(np.random.default_rng(seed).normal(size=(3, 8, 8, 3)) * 3, jnp.float32)
  new, report = surgery.shrink_with_report(m, x)
  assert report.max_abs_diff <= TOL
  probe = jnp.asarray(np.random.default_rng(100 + seed).normal(size=(16, 8, 8, 3)) * 10, jnp.float32)
  new.eval()  # BatchNorm with its running statistics, as shrink compares
  checked = sign_dead = 0
  for producer, reader_var, how, index in _readers(new):
    n = producer.kernel.shape[-1]
    if n == 1:  # a layer whose every output is dead keeps one channel by design (it cannot have width 0)
      continue
    reference = np.asarray(new.raw_outputs(probe)[index])
    for c in range(n):
      checked += 1
      original = _get(reader_var)
      k = original.copy()
      if how == "conv":
        k[..., c, :] = 0
      elif how == "flatten":
        k[c::n] = 0
      else:
        k[c] = 0
      _set(reader_var, k)
      diff = float(np.max(np.abs(np.asarray(new.raw_outputs(probe)[index]) - reference)))
      _set(reader_var, original)
      if diff <= 1e-6 and _zero_on_probes(new, producer, c, probe):
        sign_dead += 1
        continue
      assert diff > 1e-6, f"channel {c} of {producer.kernel.shape} could have been removed ({model_spec(m)})"
  _SIGN_DEAD.append((sign_dead, checked))


_SIGN_DEAD = []


def test_sign_dead_channels_are_rare():
  dead, checked = (sum(v) for v in zip(*_SIGN_DEAD)) if _SIGN_DEAD else (0, 0)
  assert checked == 0 or dead <= 0.05 * checked, (dead, checked)


def _zero_on_probes(model, producer, c, probe):
  """Whether channel c of ``producer``, as the next reader sees it, is 0 on every probe."""
  x, seen = probe, False
  for (kind, _), layer in zip(model.spec, model.layers):
    if kind in ("conv", "convbn"):
      if seen:
        return bool(np.all(np.asarray(x[..., c]) == 0))
      seen = layer["conv"] is producer
    if kind in ("conv", "convbn", "dw"):
      raw = layer["conv"](x)
      x = nnx.relu(raw) if kind == "conv" else nnx.relu(layer["bn"](raw))
    elif kind == "maxpool":
      x = nnx.max_pool(x, (3, 3), (2, 2), padding="SAME")
    elif kind == "avgpool":
      x = nnx.avg_pool(x, (2, 2), (2, 2), padding="SAME")
  return bool(np.all(np.asarray(x[..., c]) == 0))


def model_spec(m):
  return f"spec={m.spec}, flatten={m.flatten}"


def test_a_network_whose_output_reads_nothing_keeps_one_channel_per_layer_reading_one_input():
  m = TutorialCNN(rngs=nnx.Rngs(9))
  _set(m.linear2.kernel, np.zeros((256, 10)))  # the output is the bias alone: every hidden channel is dead
  x = jnp.asarray(np.random.default_rng(9).normal(size=(2, 28, 28, 1)), jnp.float32)
  # one placeholder channel per layer (a layer cannot have width 0), reading one placeholder input
  expected = (9 * 1 + 1) + (9 * 1 * 1 + 1) + (49 * 1 + 1) + (1 * 10 + 10)
  _shrink(m, x, expected)


# ------------------------------------------- models with several inputs (tuple / dict) ---


class TwoTower(nnx.Module):
  """Token ids and dense features, summed into one hidden layer: ``model(tokens, features, scale=...)``."""

  def __init__(self, rngs):
    self.embed = nnx.Embed(20, 6, rngs=rngs)
    self.tokens = nnx.Linear(6, 8, rngs=rngs)
    self.features = nnx.Linear(3, 8, rngs=rngs)
    self.head = nnx.Linear(8, 4, rngs=rngs)

  def __call__(self, tokens, features, scale=1.0):
    h = self.tokens(self.embed(tokens).mean(1)) + self.features(features)
    return self.head(nnx.relu(h)) * scale


def test_a_model_with_several_inputs_takes_a_tuple_or_a_dict():
  m = TwoTower(rngs=nnx.Rngs(0))
  _kill_filters(m.tokens, [2, 5])
  _kill_filters(m.features, [2, 5])  # hidden units 2 and 5 are exactly 0 for every input
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 20, size=(3, 7)), jnp.int32)
  features = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3)), jnp.float32)
  expected = 20 * 6 + (6 * 6 + 6) + (3 * 6 + 6) + (6 * 4 + 4)
  for sample in ((tokens, features), {"tokens": tokens, "features": features, "scale": 2.0}):
    new, report = surgery.shrink_with_report(m, sample)
    assert report.max_abs_diff <= TOL and _params(new) == expected, report
    np.testing.assert_allclose(new(tokens, features, scale=2.0), m(tokens, features, scale=2.0), atol=TOL)
  with pytest.raises(ValueError, match="same batch axis"):
    surgery.shrink(m, (tokens, features[:2]))
  with pytest.raises(ValueError, match="holds no array"):
    surgery.shrink(m, ())
  scalar = {"tokens": tokens, "features": features, "scale": jnp.float32(2.0)}  # a 0-d array argument is passed as
  new, report = surgery.shrink_with_report(m, scalar)  # it is, like a Python number (before: "non-empty batch axis")
  assert report.max_abs_diff <= TOL and _params(new) == expected, report
  with pytest.raises(ValueError, match="non-empty batch axis"):  # but only scalars is no batch
    surgery.shrink(m, (jnp.float32(1.0), jnp.float32(2.0)))
  sig = r"sample_input does not fit TwoTower.__call__\(tokens, features, scale=1.0\): "
  with pytest.raises(TypeError, match=sig + "missing a required argument: 'features'"):
    regularisers.group_lasso(neuron=0.1).for_model(m, tokens)  # one array is model(x): said before any tracing
  with pytest.raises(TypeError, match=sig + "got an unexpected keyword argument 'scales'"):
    surgery.shrink(m, {"tokens": tokens, "features": features, "scales": 2.0})


# ------------------------------------------ layers stacked by nnx.vmap and run by nnx.scan ---


class ScanBlock(nnx.Module):
  def __init__(self, rngs):
    self.fc = nnx.Linear(8, 8, rngs=rngs)

  def __call__(self, x):
    return x + nnx.relu(self.fc(x))


class ScannedStack(nnx.Module):
  """big_vision-style: three blocks with one stacked kernel (3, 8, 8), applied by nnx.scan."""

  def __init__(self, rngs):
    self.inp1 = nnx.Linear(5, 8, rngs=rngs)
    self.inp2 = nnx.Linear(8, 8, rngs=rngs)

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def blocks(rngs):
      return ScanBlock(rngs)

    self.blocks = blocks(rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def run(block, h):
      return block(h)

    return self.head(run(self.blocks, self.inp2(nnx.relu(self.inp1(x)))))


def test_scanned_layers_are_kept_and_the_layers_around_them_still_shrink():
  # the analysis does not read inside `scan`: the stack's channels stay (a note says so); before, the
  # stacked (3, 8, 8) kernel made shrink crash while updating the Linear's feature counts
  m = ScannedStack(rngs=nnx.Rngs(0))
  _kill_filters(m.inp1, [1, 4])
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32)
  expected = (5 * 6 + 6) + (6 * 8 + 8) + 3 * (8 * 8 + 8) + (8 * 3 + 3)
  new, report = _shrink(m, x, expected)
  assert any("'scan' is not understood" in note for note in report.notes), report.notes
  assert new.blocks.fc.kernel.shape == (3, 8, 8) and (new.blocks.fc.in_features, new.blocks.fc.out_features) == (8, 8)
  assert (new.inp2.in_features, new.inp2.kernel.shape) == (6, (6, 8))


class EmbeddingAttentionNet(nnx.Module):
  def __init__(self, rngs):
    self.emb = nnx.Embed(50, 16, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=16, qkv_features=16, decode=False, rngs=rngs)
    self.ff1 = nnx.Linear(16, 8, rngs=rngs)
    self.out = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, t, train=False):
    h = self.emb(t)
    h = h + self.attn(h)
    return self.out(nnx.relu(self.ff1(h.mean(1))))


@pytest.mark.parametrize("dead", [10, 16])
def test_a_stream_that_starts_at_an_embedding_lookup_is_cut_with_the_tables_columns(dead):
  """Every reader of stream channels 0..dead-1 is zero: the lookup's table columns and the attention output's
  columns that write them go (all 16 dead: one channel stays so the layers keep a width)."""
  m = EmbeddingAttentionNet(nnx.Rngs(0))
  t = jnp.asarray(np.random.default_rng(0).integers(0, 50, (8, 6)))
  for layer in (m.ff1, m.attn.query, m.attn.key, m.attn.value):
    k = np.array(layer.kernel[...])
    k[:dead] = 0
    layer.kernel[...] = jnp.asarray(k)
  small = surgery.shrink(m, t)
  width = max(16 - dead, 1)
  assert small.emb.embedding.shape == (50, width) and small.emb.features == width
  assert small.attn.out.kernel.shape[-1] == width and small.attn.query.kernel.shape[0] == width
  assert small.ff1.kernel.shape[0] == width and (dead == 16 or small.ff1.kernel.shape == (width, 8))
  np.testing.assert_allclose(np.asarray(small(t)), np.asarray(m(t)), atol=1e-6)


class EmbeddingOrDenseNet(nnx.Module):
  """jnp.where picks, per token, the embedding itself or a dense layer of it."""

  def __init__(self, rngs):
    self.emb = nnx.Embed(50, 16, rngs=rngs)
    self.fc1 = nnx.Linear(16, 16, rngs=rngs)
    self.fc2 = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, t, train=False):
    e = self.emb(t)
    return self.fc2(jnp.where(t[..., None] > 25, e, nnx.relu(self.fc1(e))).mean(1))


def test_a_select_between_a_layer_and_an_embedding_lookup_keeps_the_layers_channels():
  m = EmbeddingOrDenseNet(nnx.Rngs(0))
  t = jnp.asarray(np.random.default_rng(0).integers(0, 50, (8, 6)))
  k = np.array(m.fc2.kernel[...])
  k[:10] = 0  # nothing reads fc1's outputs 0..9 any more, but the lookup fills the same positions
  m.fc2.kernel[...] = jnp.asarray(k)
  small = surgery.shrink(m, t)
  assert small.fc1.kernel.shape == (16, 16)
  np.testing.assert_allclose(np.asarray(small(t)), np.asarray(m(t)), atol=1e-6)


class TokenAndPositionNet(nnx.Module):
  """Token and position embeddings (a lookup at fixed positions) summed into a stream, an MLP, mean pooling."""

  def __init__(self, rngs):
    self.emb = nnx.Embed(50, 16, rngs=rngs)
    self.pos = nnx.Embed(8, 16, rngs=rngs)
    self.fc1 = nnx.Linear(16, 32, rngs=rngs)
    self.fc2 = nnx.Linear(32, 16, rngs=rngs)
    self.head = nnx.Linear(16, 5, rngs=rngs)

  def __call__(self, t, train=False):
    h = self.emb(t) + self.pos(jnp.arange(t.shape[1]))[None]
    h = h + self.fc2(nnx.gelu(self.fc1(h)))
    return self.head(h.mean(1))


def test_token_and_position_tables_lose_the_stream_channels_nobody_reads(tmp_path):
  m = TokenAndPositionNet(nnx.Rngs(0))
  t = jnp.asarray(np.random.default_rng(0).integers(0, 50, (4, 8)))
  assert metrics.macs(m, t) == 16 * 32 + 32 * 16 + 16 * 5  # lookups cost no multiply-adds
  for layer, index in ((m.fc1, np.s_[:5]), (m.head, np.s_[:5]), (m.fc2, np.s_[:, :5])):  # stream channels 0..4
    k = np.array(layer.kernel[...])
    k[index] = 0
    layer.kernel[...] = jnp.asarray(k)
  small = surgery.shrink(m, t)
  assert small.emb.embedding.shape == (50, 11) and small.pos.embedding.shape == (8, 11)
  assert small.fc1.kernel.shape == (11, 32) and small.fc2.kernel.shape == (32, 11) and small.head.kernel.shape == (11, 5)
  np.testing.assert_allclose(np.asarray(small(t)), np.asarray(m(t)), atol=1e-6)
  surgery.save(tmp_path, small, factory="token_position_net", kwargs={}, cuts=surgery.plan(m, t).cuts)
  loaded = surgery.load(tmp_path, factories={"token_position_net": lambda: TokenAndPositionNet(nnx.Rngs(1))})
  assert loaded.emb.features == 11  # the rebuilt table's attribute follows its columns
  np.testing.assert_allclose(np.asarray(loaded(t)), np.asarray(m(t)), atol=1e-6)


class FixedShiftNet(nnx.Module):
  SHIFT = np.linspace(-1, 1, 16).astype(np.float32)  # an array written into the code, not a parameter

  def __init__(self, rngs):
    self.fc1 = nnx.Linear(12, 16, rngs=rngs)
    self.fc2 = nnx.Linear(16, 5, rngs=rngs)

  def __call__(self, x, train=False):
    return self.fc2(nnx.relu(self.fc1(x) + self.SHIFT))


def test_channels_combined_with_an_array_written_into_the_code_are_kept():
  """Cutting fc1's unread outputs would leave the 16-long constant unmatched (the rebuilt model failed)."""
  m = FixedShiftNet(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 12)), jnp.float32)
  k = np.array(m.fc2.kernel[...])
  k[:5] = 0
  m.fc2.kernel[...] = jnp.asarray(k)
  small = surgery.shrink(m, x)
  assert small.fc1.kernel.shape == (12, 16)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(m(x)), atol=1e-6)


def test_an_all_zero_stream_under_rmsnorm_keeps_the_channels_its_scale_varies_along():
  """RMSNorm of an all-zero stream is rsqrt(eps)·scale, known but no channel's: cutting the stream left the scale
  at 16 entries and the rebuilt model failed to reshape it."""
  from test_coupled import SwiGLUNet

  m = SwiGLUNet(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6, 12)), jnp.float32)
  for layer in (m.emb, m.gate, m.up, m.down, m.head):
    layer.kernel[...] = jnp.zeros_like(layer.kernel[...])
    layer.bias[...] = jnp.zeros_like(layer.bias[...])
  small = surgery.shrink(m, x)
  assert small.norm.scale.shape == small.emb.kernel.shape[1:] == (16,)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(m(x)), atol=1e-6)


def test_magnitude_thresholding_leaves_embedding_tables_alone():
  """DEGL's threshold acts on the layers it regularises; a lookup table is not one of them."""
  from mobileprune_jax.train.actions import magnitude_threshold

  m = TokenAndPositionNet(nnx.Rngs(0))
  t = jnp.asarray(np.random.default_rng(0).integers(0, 50, (4, 8)))
  tables = (np.asarray(m.emb.embedding[...]).copy(), np.asarray(m.pos.embedding[...]).copy())
  threshold = float(np.median(np.abs(np.asarray(m.fc1.kernel[...]))))
  assert np.mean(np.abs(tables[0]) <= threshold) > 0.1  # the table has entries below the threshold
  out = magnitude_threshold(m, t, threshold, layers="all", exclude="head/kernel")
  np.testing.assert_array_equal(np.asarray(m.emb.embedding[...]), tables[0])
  np.testing.assert_array_equal(np.asarray(m.pos.embedding[...]), tables[1])
  assert np.mean(np.asarray(m.fc1.kernel[...]) == 0) >= 0.5 and out is not None


def test_a_sample_input_the_model_cannot_take_is_one_line_naming_its_shape():
  """Before: the model's own error from deep inside the trace (e.g. conv_general_dilated's), with no word of the input."""
  model = TutorialCNN(rngs=nnx.Rngs(0))
  wrong = jnp.zeros((2, 28, 28, 3))  # the model takes one channel
  for run in (lambda: surgery.shrink(model, wrong), lambda: regularisers.group_lasso(neuron=0.1).for_model(model, wrong)):
    with pytest.raises(ValueError, match=r"does not run on the sample input \(cut to a batch of one: "
                                         r"float32\[1, 28, 28, 3\]\): ValueError: conv_general_dilated") as info:
      run()
    assert "\n" not in str(info.value)
