"""Metrics pinned to the papers' arithmetic (docs/algorithms.md §E, §G)."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mobileprune_jax import metrics, models, surgery


def _mobileprune_lenet5():
  """LeNet-5 with MobilePrune's published structure: 5-14-151-57, filter sizes 16-65."""
  m = models.create("lenet5")
  rng = np.random.default_rng(0)
  k1 = np.asarray(m.conv1.kernel[...]).copy()
  taps1 = rng.permutation(25)[:9]
  k1.reshape(25, 1, 20)[taps1] = 0  # 16 live taps of 25
  k2 = np.asarray(m.conv2.kernel[...]).copy()
  k2[:, :, 5:, :] = 0  # conv2 reads 5 of conv1's 20 channels
  k2[..., 14:] = 0  # 14 live conv2 filters
  b2 = np.asarray(m.conv2.bias[...]).copy()
  b2[14:] = 0
  flat = k2[:, :, :5, :].reshape(125, 50)
  flat[rng.permutation(125)[:60]] = 0  # 65 live (h, w, c) taps of 125
  k2[:, :, :5, :] = flat.reshape(5, 5, 5, 50)
  f1 = np.asarray(m.fc1.kernel[...]).copy()
  channel = np.arange(800) % 50
  live_rows = rng.permutation(np.flatnonzero(channel < 14))[:151]
  mask = np.zeros(800, bool)
  mask[live_rows] = True
  f1[~mask] = 0  # 151 non-zero rows
  f2 = np.asarray(m.fc2.kernel[...]).copy()
  f2[57:] = 0  # 57 live FC1 units
  for var, value in ((m.conv1.kernel, k1), (m.conv2.kernel, k2), (m.conv2.bias, b2), (m.fc1.kernel, f1), (m.fc2.kernel, f2)):
    var.set_value(jnp.asarray(value))
  return m


def test_lenet5_dense_and_mobileprune_numbers():
  x = jnp.zeros((1, 28, 28, 1))
  dense = models.create("lenet5")
  assert metrics.count_params(nnx.state(dense, nnx.Param)) == 431_080
  assert metrics.macs(dense, x) == 2_293_000
  pruned = _mobileprune_lenet5()
  shrunk = surgery.shrink(pruned, x)
  stats = metrics.layer_stats(shrunk, x)
  assert metrics.architecture(stats) == "5-14-151-57"
  assert metrics.filter_sizes(stats) == "16-65"
  assert metrics.macs(shrunk, x, sparse=True) == 113_497  # MobilePrune's "113.50K"
  summary = metrics.summary(dense, shrunk, x)
  assert summary["macs_pruned"] == 113_497 and summary["macs_dense"] == 2_293_000
  assert summary["architecture_dense"] == "20-50-800-500"
  # params of the rebuilt model = what its arrays hold
  expected = 5 * 25 + 5 + 14 * 125 + 14 + 224 * 57 + 57 + 57 * 10 + 10
  assert summary["params_remaining"] == expected
  assert summary["mms_bytes_pruned"] == 4 * expected


@pytest.mark.parametrize("name,shape,params,macs", [
    ("lenet300", (1, 28, 28, 1), 266_610, 266_200),
    ("vgg_like", (1, 32, 32, 3), None, 313_463_808),
    ("resnet32_wide", (1, 32, 32, 3), None, 1_100_679_680),
    ("resnet56", (1, 32, 32, 3), None, 125_485_696),
])
@pytest.mark.slow
def test_zoo_counts_match_the_spec(name, shape, params, macs):
  m = models.create(name)
  if params is not None:
    assert metrics.count_params(nnx.state(m, nnx.Param)) == params
  assert metrics.macs(m, jnp.zeros(shape)) == macs


def test_zoo_weight_counts():
  from mobileprune_jax import groups

  def weights(m):
    st = nnx.state(m, nnx.Param)
    return sum(int(np.prod(x.shape)) for r, x in zip(groups.leaf_roles(st), __import__("jax").tree.leaves(st)) if r != "none")

  assert weights(models.create("vgg_like")) == 14_978_250  # ≈ 15.0M
  assert weights(models.create("resnet32_wide")) == 7_418_058  # 7.418M
  assert weights(models.create("resnet56")) == 848_954  # 0.85M
  assert weights(models.create("vgg19_tiny")) == 20_121_480  # 20.12M
  har = models.create("har_cnn", in_channels=3, num_classes=6, window=80, kernel=10)
  conv = sum(int(np.prod(c.kernel.shape)) for c in har.convs)
  assert conv == 659_200  # WISDM conv stack


def test_vgg19_tiny_macs():
  assert metrics.macs(models.create("vgg19_tiny"), jnp.zeros((1, 64, 64, 3))) == pytest.approx(1592.5e6, rel=1e-3)


def test_cmf_matches_hand_computation():
  stats = metrics.layer_stats(models.create("lenet5"), jnp.zeros((1, 28, 28, 1)))
  by_hand = 4 * ((500 + 24 * 24 * 20) + (25000 + 8 * 8 * 50) + (400000 + 500) + (5000 + 10))
  assert metrics.cmf_bytes(stats) == by_hand


@pytest.mark.slow
def test_one_analysis_answers_kernels_classifier_coupling_and_rules():
  from mobileprune_jax import analysis, models

  m = models.create("mobilenet_v2", width=0.35, in_channels=1)
  a = analysis.analyze(m, jnp.zeros((1, 32, 32, 1)))
  assert a.kernel_paths[0] == "stem/conv/kernel" and a.classifier == "classifier/kernel"
  depthwise = [p for p in a.kernel_paths if "depthwise" in p]
  assert len(depthwise) == 17 and all(a.layers[a.kernel_paths.index(p)].kind == "depthwise" for p in depthwise)
  assert sum(r == "depthwise" for _, r in a.rules) == 17 and {r for _, r in a.rules} == {"depthwise", "none"}  # + BatchNorm
  # every depthwise filter is coupled with the channel it reads; residual adds couple block outputs
  sizes = sorted(len(g) for g in a.coupled_groups())
  assert sizes and min(sizes) >= 2
  # the same trace serves metrics for any model with this architecture
  assert metrics.layer_stats(m, None, graph=a.graph) == metrics.layer_stats(m, jnp.zeros((1, 32, 32, 1)))
