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
