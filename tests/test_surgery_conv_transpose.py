"""``nnx.ConvTranspose`` in both kernel layouts: surgery, groups role, coupled units.

With ``transpose_kernel=True`` (PyTorch's layout) the kernel is (kh, kw, out, in) and reaches the
convolution flipped and transposed. The removable channels are counted by hand from the zero pattern;
the shrunk model must match the original's outputs; the group proxes are checked against numpy
written from the definitions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mobileprune_jax import groups, regularisers, surgery
from mobileprune_jax.surgery import kernels


class UpNet(nnx.Module):
  """enc (3→8) → mid (8→16, stride 2) → up (16→8, ConvTranspose stride 2) → concat with enc → dec (16→8) → head."""

  def __init__(self, transpose_kernel: bool, seed: int = 0):
    rngs = nnx.Rngs(seed)
    self.enc = nnx.Conv(3, 8, (3, 3), rngs=rngs)
    self.mid = nnx.Conv(8, 16, (3, 3), strides=(2, 2), rngs=rngs)
    self.up = nnx.ConvTranspose(16, 8, (3, 3), strides=(2, 2), transpose_kernel=transpose_kernel, rngs=rngs)
    self.dec = nnx.Conv(16, 8, (3, 3), rngs=rngs)
    self.head = nnx.Conv(8, 2, (1, 1), rngs=rngs)

  def __call__(self, x):
    e = nnx.relu(self.enc(x))
    u = nnx.relu(self.up(nnx.relu(self.mid(e))))
    return self.head(nnx.relu(self.dec(jnp.concatenate([e, u], -1))))


def _axes(transpose_kernel):
  """(input-channel axis, output-channel axis) of the ConvTranspose kernel."""
  return (-1, -2) if transpose_kernel else (-2, -1)


def _params(model):
  return sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


X = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)


@pytest.mark.parametrize("transpose_kernel", [False, True])
@pytest.mark.slow
def test_dead_inputs_and_outputs_of_a_transposed_conv_are_removed(transpose_kernel, tmp_path):
  model = UpNet(transpose_kernel)
  in_axis, out_axis = _axes(transpose_kernel)
  k = np.asarray(model.up.kernel[...]).copy()
  np.moveaxis(k, in_axis, 0)[[1, 4, 9]] = 0  # up reads none of mid's channels 1, 4, 9
  np.moveaxis(k, out_axis, 0)[[2, 5]] = 0  # and its filters 2, 5 are zero (bias too): ReLU keeps them 0
  model.up.kernel[...] = jnp.asarray(k)
  model.up.bias[...] = model.up.bias[...].at[jnp.array([2, 5])].set(0.0)
  small, report = surgery.shrink_with_report(model, X)
  assert small.mid.kernel.shape == (3, 3, 8, 13)
  assert small.up.kernel.shape == ((3, 3, 6, 13) if transpose_kernel else (3, 3, 13, 6))
  assert small.dec.kernel.shape == (3, 3, 14, 8)
  # by hand: mid loses 3 filters (3·3·8 + bias), up loses 3 input slices (3·3·8) and 2 filters (3·3·13 + bias),
  # dec loses 2 input slices (3·3·8)
  assert _params(small) == _params(model) - 3 * (72 + 1) - 3 * 72 - 2 * (9 * 13 + 1) - 2 * 72
  assert (small.up.in_features, small.up.out_features) == (13, 6)
  assert not report.notes, report.notes
  np.testing.assert_allclose(small(X), model(X), atol=1e-5)
  surgery.save(tmp_path / "m", small, factory="upnet_for_tests", kwargs={"transpose_kernel": transpose_kernel},
               cuts=report.cuts)
  loaded = surgery.load(tmp_path / "m", factories={"upnet_for_tests": UpNet})
  np.testing.assert_array_equal(np.asarray(loaded(X)), np.asarray(small(X)))


def test_the_pytorch_layout_gets_its_own_role_from_the_model():
  assert groups.rules_for_model(UpNet(False)) == []
  rules = groups.rules_for_model(UpNet(True))
  assert rules == [(r"^up/kernel$", "conv_out_in")]
  roles = dict(zip(groups.leaf_paths(nnx.state(UpNet(True), nnx.Param)),
                   groups.leaf_roles(nnx.state(UpNet(True), nnx.Param), rules)))
  assert roles["up/kernel"] == "conv_out_in" and roles["mid/kernel"] == "conv"


def _block_shrink(g, t):
  norm = np.linalg.norm(g)
  return g * max(0.0, 1 - t / norm) if norm > 0 else g


def test_channel_groups_of_the_pytorch_layout_are_its_input_channels():
  model = UpNet(True)
  k = np.asarray(model.up.kernel[...]).copy()  # (3, 3, out=8, in=16)
  k[..., [2, 11]] *= 0.1  # two weak input channels: their groups go
  params = {"up": {"kernel": k}}
  lam, s = 0.4, 1.0
  reg = regularisers.group_lasso(channel=lam, rules=[(r"up/kernel", "conv_out_in")])
  got = np.asarray(reg.prox(params, s)["up"]["kernel"])
  want = np.stack([_block_shrink(k[..., c], s * lam) for c in range(16)], axis=-1)  # one group per input channel
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.flatnonzero(np.abs(got).reshape(-1, 16).max(0) == 0).tolist() == [2, 11]


def test_degl_groups_of_the_pytorch_layout_are_its_output_filters():
  model = UpNet(True)
  k = np.asarray(model.up.kernel[...])  # (3, 3, out=8, in=16)
  gamma, lam, s = 0.05, 0.1, 1.0
  reg = regularisers.elastic_group_lasso(gamma, lam, rules=[(r"up/kernel", "conv_out_in")])
  got = np.asarray(reg.prox({"up": {"kernel": k}}, s)["up"]["kernel"])
  size = 3 * 3 * 16
  want = np.stack([_block_shrink(k[:, :, o, :] / (1 + 2 * s * lam), s * gamma * np.sqrt(size) / (1 + 2 * s * lam))
                   for o in range(8)], axis=2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_coupled_units_of_the_pytorch_layout_remove_the_channels_it_reads():
  model = UpNet(True)
  k = np.asarray(model.up.kernel[...]).copy()
  k[..., [3, 7]] *= 1e-3  # mid's channels 3 and 7 are read weakly: their units should go
  model.up.kernel[...] = jnp.asarray(k)
  reg = regularisers.group_lasso(channel=0.05).for_model(model, X)
  params = nnx.state(model, nnx.Param)
  nnx.update(model, reg.prox(params, 1.0))
  new = np.asarray(model.up.kernel[...])
  assert np.all(new[..., [3, 7]] == 0) and np.all(np.abs(new).reshape(-1, 16).max(0)[[0, 1, 2, 4, 5, 6]] > 0)
  small = surgery.shrink(model, X)
  assert small.mid.kernel.shape[-1] == 16 - int(np.sum(np.abs(new).reshape(-1, 16).max(0) == 0))
  assert small.mid.kernel.shape[-1] <= 14


def test_kernel_views_against_numpy():
  p = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
  idx = np.arange(p.size).reshape(p.shape)
  v = kernels.view(p[::-1].transpose(0, 1, 3, 2), {"w": idx[::-1].transpose(0, 1, 3, 2)}, {"w": p.shape})
  assert v.path == "w" and v.axis_of == (0, 1, 3, 2) and v.reversed == {0}
  np.testing.assert_array_equal(v.value, p)
  assert kernels.view(p.T, {"w": idx.T}, {"w": p.shape}).axis_of == (3, 2, 1, 0)
  # not views: a slice, a repeat, a reshape that mixes axes, entries of two parameters
  assert kernels.view(p[:, :2], {"w": idx[:, :2]}, {"w": p.shape}) is None
  assert kernels.view(np.concatenate([p, p]), {"w": np.concatenate([idx, idx])}, {"w": p.shape}) is None
  assert kernels.view(p.reshape(3, 2, 4, 5), {"w": idx.reshape(3, 2, 4, 5)}, {"w": p.shape}) is None
  assert kernels.view(p, {"w": idx, "b": idx}, {"w": p.shape, "b": p.shape}) is None
