"""Roles and group layouts of parameter leaves."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from models_for_tests import LinenMLP, SmallCNN

from mobileprune_jax import groups


def _roles_by_path(params, rules=None):
  return dict(zip(groups.leaf_paths(params), groups.leaf_roles(params, rules)))


@pytest.mark.slow
def test_roles_on_nnx_state():
  model = SmallCNN(nnx.Rngs(0))
  roles = _roles_by_path(nnx.state(model, nnx.Param))
  assert roles == {
      "bn1/bias": "none", "bn1/scale": "none",
      "conv1/bias": "bias", "conv1/kernel": "conv",
      "conv2/bias": "bias", "conv2/kernel": "conv",
      "fc1/bias": "bias", "fc1/kernel": "dense",
      "fc2/bias": "bias", "fc2/kernel": "dense",
  }
  # the whole state (with BatchNorm statistics) works too
  full = _roles_by_path(nnx.state(model))
  assert full["bn1/mean"] == "none" and full["bn1/var"] == "none"


def test_roles_on_linen_dict_and_rules():
  params = LinenMLP().init(jax.random.key(0), jnp.ones((1, 5)))
  roles = _roles_by_path(params)
  assert roles["params/Dense_0/kernel"] == "dense"
  assert roles["params/Dense_1/bias"] == "bias"
  assert roles["params/LayerNorm_0/scale"] == "none"
  assert roles["params/LayerNorm_0/bias"] == "none"
  roles = _roles_by_path(params, rules=[(r"Dense_1/", "none")])
  assert roles["params/Dense_1/kernel"] == "none" and roles["params/Dense_0/kernel"] == "dense"


def test_unknown_leaf_and_bad_rules_name_the_path():
  params = {"embed": {"embedding": jnp.ones((10, 4))}, "fc": {"kernel": jnp.ones((4, 2))}}
  with pytest.raises(ValueError, match="'embed/embedding'"):
    groups.leaf_roles(params)
  assert groups.leaf_roles(params, rules=[(r"embedding$", "none")]) == ["none", "dense"]
  with pytest.raises(ValueError, match="'fc/kernel' of shape \\(4, 2\\) cannot have role 'conv'"):
    groups.leaf_roles(params, rules=[(r"fc/kernel", "conv"), (r"embedding", "none")])
  with pytest.raises(ValueError, match="role must be one of"):
    groups.leaf_roles(params, rules=[(r"fc", "neuron")])


def test_layouts_match_the_spec_groups():
  rng = np.random.default_rng(0)
  k = jnp.asarray(rng.normal(size=(3, 2, 5, 7)))  # (kh, kw, in, out) HWIO
  trees = groups.to_channel_trees(k)
  assert trees.shape == (5, 6, 7)
  for c in range(5):
    # root = every weight that reads input channel c; leaf (h, w) = one tap across filters
    np.testing.assert_array_equal(np.sort(np.ravel(trees[c])), np.sort(np.ravel(k[:, :, c, :])))
    for h in range(3):
      for w in range(2):
        np.testing.assert_array_equal(trees[c, h * 2 + w], k[h, w, c, :])
  np.testing.assert_array_equal(groups.from_channel_trees(trees, k.shape), k)
  out = groups.to_output_groups(k)
  assert out.shape == (7, 30)
  np.testing.assert_array_equal(np.sort(out[4]), np.sort(np.ravel(k[..., 4])))
  np.testing.assert_array_equal(groups.from_output_groups(out, k.shape), k)
  k1 = jnp.asarray(rng.normal(size=(4, 3, 2)))  # conv1d (k, in, out)
  np.testing.assert_array_equal(groups.to_channel_trees(k1)[1], k1[:, 1, :])
  dense = jnp.asarray(rng.normal(size=(4, 3)))
  np.testing.assert_array_equal(groups.to_neuron_groups(dense)[2], dense[2])  # input neuron 2


def test_attention_kernels_are_head_groups_never_conv():
  mha = nnx.MultiHeadAttention(num_heads=4, in_features=16, qkv_features=16, decode=False, rngs=nnx.Rngs(0))
  roles = _roles_by_path(nnx.state(mha, nnx.Param))
  assert roles == {"query/kernel": "heads_in", "key/kernel": "heads_in", "value/kernel": "heads_in",
                   "query/bias": "bias", "key/bias": "bias", "value/bias": "bias",
                   "out/kernel": "heads_out", "out/bias": "bias"}
  q = np.random.default_rng(0).normal(size=(16, 4, 4))
  heads = np.asarray(groups.to_head_groups(jnp.asarray(q), "heads_in"))
  np.testing.assert_allclose(heads[2], q[:, 2, :].ravel(), rtol=1e-6)  # head 2 = every weight producing it
  np.testing.assert_allclose(groups.from_head_groups(jnp.asarray(heads), q.shape, "heads_in"), q, rtol=1e-6)
  o = np.random.default_rng(1).normal(size=(4, 4, 16))
  np.testing.assert_allclose(np.asarray(groups.to_head_groups(jnp.asarray(o), "heads_out"))[1], o[1].ravel(), rtol=1e-6)


@pytest.mark.slow
def test_depthwise_kernels_come_from_the_model_and_group_per_channel():
  class Block(nnx.Module):
    def __init__(self, rngs):
      self.expand = nnx.Conv(4, 8, (1, 1), rngs=rngs)
      self.dw = nnx.Conv(8, 8, (3, 3), feature_group_count=8, rngs=rngs)
      self.grouped = nnx.Conv(8, 8, (3, 3), feature_group_count=2, rngs=rngs)

  model = Block(nnx.Rngs(0))
  rules = groups.rules_for_model(model)
  roles = _roles_by_path(nnx.state(model, nnx.Param), rules)
  assert roles["dw/kernel"] == "depthwise" and roles["grouped/kernel"] == "none" and roles["expand/kernel"] == "conv"
  k = np.random.default_rng(2).normal(size=(3, 3, 1, 8))
  trees = np.asarray(groups.to_depthwise_trees(jnp.asarray(k)))
  assert trees.shape == (8, 9, 1)
  np.testing.assert_allclose(trees[5, :, 0], k[..., 0, 5].ravel(), rtol=1e-6)  # channel 5's filter, tap by tap
  np.testing.assert_allclose(groups.from_depthwise_trees(jnp.asarray(trees), k.shape), k, rtol=1e-6)


def test_group_lasso_zeroes_whole_depthwise_filters_and_heads():
  from mobileprune_jax import transforms

  rng = np.random.default_rng(3)
  dw = rng.normal(size=(3, 3, 1, 6)) * np.array([0.01, 1, 0.02, 1, 1, 0.01])  # channels 0, 2, 5 small
  q = rng.normal(size=(8, 3, 4)) * np.array([1, 0.01, 1])[None, :, None]  # head 1 small
  params = {"block": {"dw": {"kernel": jnp.asarray(dw, jnp.float32)}},
            "attn": {"query": {"kernel": jnp.asarray(q, jnp.float32)}, "key": {"kernel": jnp.ones((8, 3, 4))},
                     "value": {"kernel": jnp.ones((8, 3, 4))}}}
  lam = 0.5
  tx = transforms.group_lasso(1.0, channel=lam, rules=[(r"^block/dw/kernel$", "depthwise")])
  zeros = jax.tree.map(jnp.zeros_like, params)
  u, _ = tx.update(zeros, tx.init(params), params)
  new = jax.tree.map(lambda p, d: np.asarray(p + d), params, u)
  for c in range(6):  # reference: block soft threshold of each channel's filter (no shape term)
    f = dw[..., 0, c]
    expected = max(0.0, 1 - lam / np.linalg.norm(f)) * f
    np.testing.assert_allclose(new["block"]["dw"]["kernel"][..., 0, c], expected, rtol=1e-5, atol=1e-6)
  assert [bool(np.all(new["block"]["dw"]["kernel"][..., 0, c] == 0)) for c in range(6)] == [1, 0, 1, 0, 0, 1]
  for h in range(3):
    g = q[:, h, :]
    np.testing.assert_allclose(new["attn"]["query"]["kernel"][:, h, :], max(0.0, 1 - lam / np.linalg.norm(g)) * g,
                               rtol=1e-5, atol=1e-6)
  assert np.all(new["attn"]["query"]["kernel"][:, 1, :] == 0)
