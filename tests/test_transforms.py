"""The prox transforms inside optax chains, on NNX and linen parameter trees."""

import brute_force as bf
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from models_for_tests import LinenMLP, SmallCNN, small_batch, xent

from mobileprune_jax import groups, prox, transforms


def _train(model, tx, steps, seed=0):
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x, y = small_batch(seed)

  @nnx.jit
  def step(model, opt):
    loss, grads = nnx.value_and_grad(lambda m: xent(m(x), y))(model)
    opt.update(model, grads)
    return loss

  for _ in range(steps):
    step(model, opt)
  return opt


@pytest.mark.slow
def test_mobileprune_chain_zeroes_whole_groups_on_nnx_model():
  model = SmallCNN(nnx.Rngs(0))
  lr = 0.05
  tx = optax.chain(optax.sgd(lr, momentum=0.9),
                   transforms.l0_sparse_group_lasso(lr, l0=1e-3, neuron=0.3, channel=0.7, shape=0.2))
  _train(model, tx, 20)
  k2 = np.asarray(model.conv2.kernel[...])
  dead_channels = np.all(k2 == 0, axis=(0, 1, 3))
  dead_taps = np.all(k2 == 0, axis=3)
  dead_rows = np.all(np.asarray(model.fc1.kernel[...]) == 0, axis=1)
  assert 1 <= dead_channels.sum() < 6 and dead_rows.sum() >= 10
  assert dead_taps.sum() > 9 * dead_channels.sum()  # shape groups beyond whole channels
  assert np.all(np.isfinite(k2))
  # BatchNorm is not penalised
  assert np.all(np.asarray(model.bn1.scale[...]) != 0)


def test_one_step_equals_brute_force_prox_of_sgd_step():
  """After sgd + l0_sgl, each dense row is the exact π of the sgd iterate (brute force)."""
  params = {"fc": {"kernel": jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32),
                   "bias": jnp.zeros(5, jnp.float32)}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
  lr, l0, neuron = 0.5, 0.2, 0.6
  tx = optax.chain(optax.sgd(lr), transforms.l0_sparse_group_lasso(lr, l0=l0, neuron=neuron))
  state = tx.init(params)
  updates, _ = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  y = np.asarray(params["fc"]["kernel"], np.float64) - lr * 0.3
  for j in range(4):
    got = np.asarray(new["fc"]["kernel"][j], np.float64)
    assert bf.objective_pi(got, y[j], lr * neuron, lr * l0) <= bf.brute_pi(y[j], lr * neuron, lr * l0) + 1e-5
  assert np.any(np.all(np.asarray(new["fc"]["kernel"]) == 0, axis=1))


def test_schedule_step_size_follows_the_count():
  params = {"fc": {"kernel": jnp.full((3, 2), 1.0), "bias": jnp.zeros(2)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx = transforms.l1(lambda c: jnp.where(c >= 1, 0.25, 0.0), l1=1.0)  # step 0: lr 0, then 0.25
  state = tx.init(params)
  u, state = tx.update(zeros, state, params)
  np.testing.assert_array_equal(u["fc"]["kernel"], 0)  # lr 0 → no shrink
  u, state = tx.update(zeros, state, params)
  np.testing.assert_allclose(u["fc"]["kernel"], -0.25)  # soft threshold by 0.25
  assert int(state.count) == 2


FACTORIES = {
    "l0": lambda lr: transforms.l0(lr, l0=1e-2),
    "l1": lambda lr: transforms.l1(lr, l1=0.5),
    "l2": lambda lr: transforms.l2(lr, l2=0.1),
    "group_lasso": lambda lr: transforms.group_lasso(lr, neuron=1.0, channel=1.0, shape=0.5),
    "l1_sgl": lambda lr: transforms.l1_sparse_group_lasso(lr, l1=0.1, neuron=1.0, channel=1.0, shape=0.5),
    "l0_sgl": lambda lr: transforms.l0_sparse_group_lasso(lr, l0=1e-2, neuron=1.0, channel=1.0, shape=0.5),
    "l0_sgl_filter": lambda lr: transforms.l0_sparse_group_lasso(lr, l0=1e-2, neuron=1.0, channel=2.0, conv_grouping="output_filter"),
    "egl": lambda lr: transforms.elastic_group_lasso(lr, gamma=3.0, lam=0.1),
}


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.slow
def test_chain_with_adam_and_schedule_is_prox_of_adam_iterate(name):
  """chain(adam(sched), T(sched)) = prox with step sched(t) of the plain adam iterate."""
  factory = FACTORIES[name]
  model = SmallCNN(nnx.Rngs(1))
  params = nnx.state(model, nnx.Param)
  sched = optax.linear_schedule(0.1, 0.05, 4)
  tx = optax.chain(optax.adam(sched), factory(sched))
  base = optax.adam(sched)
  x, y = small_batch(1)
  grads = nnx.grad(lambda m: xent(m(x), y))(model)
  state, bstate = tx.init(params), base.init(params)
  update = jax.jit(tx.update)
  for t in range(3):
    u, state = update(grads, state, params)
    bu, bstate = base.update(grads, bstate, params)
    pre = optax.apply_updates(params, bu)  # the plain adam iterate
    alone = factory(float(sched(t)))  # the prox alone, constant step sched(t)
    pu, _ = alone.update(jax.tree.map(jnp.zeros_like, pre), alone.init(pre), pre)
    expected = optax.apply_updates(pre, pu)
    params = optax.apply_updates(params, u)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(expected)):
      np.testing.assert_allclose(got, want, atol=2e-6)
  assert int(state[1].count) == 3
  if name != "l2":
    assert sum(int((np.asarray(p) == 0).sum()) for p in jax.tree.leaves(params)) > 0


def test_group_lasso_conv_matches_tree_prox_and_dense_rows():
  rng = np.random.default_rng(3)
  params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 4, 5)), jnp.float32), "bias": jnp.ones(5)},
            "fc": {"kernel": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32), "bias": jnp.ones(3)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx = transforms.group_lasso(1.0, neuron=2.0, channel=3.0, shape=1.0)
  u, _ = tx.update(zeros, tx.init(params), params)
  new = optax.apply_updates(params, u)
  k = np.asarray(params["conv"]["kernel"], np.float64)
  for c in range(4):  # numpy reference: shrink each tap's filter vector, then the channel
    taps = k[:, :, c, :].reshape(9, 5)
    norms = np.linalg.norm(taps, axis=1, keepdims=True)
    taps = taps * np.maximum(1 - 1.0 / norms, 0)
    root = np.linalg.norm(taps)
    ref = taps * max(1 - 3.0 / root, 0) if root > 0 else taps
    np.testing.assert_allclose(np.asarray(new["conv"]["kernel"])[:, :, c, :].reshape(9, 5), ref, atol=1e-5)
  w = np.asarray(params["fc"]["kernel"], np.float64)
  ref = w * np.maximum(1 - 2.0 / np.linalg.norm(w, axis=1, keepdims=True), 0)
  np.testing.assert_allclose(new["fc"]["kernel"], ref, atol=1e-5)
  np.testing.assert_allclose(new["fc"]["bias"], 0.0)  # |1| ≤ 2: singleton groups vanish


def test_elastic_group_lasso_is_its_prox_on_output_groups():
  import scipy.optimize

  rng = np.random.default_rng(4)
  k = rng.normal(size=(3, 3, 2, 4))
  k[..., 0] *= 0.1  # a weak filter: its group goes to exactly 0
  params = {"conv": {"kernel": jnp.asarray(k, jnp.float32), "bias": jnp.ones(4)}}
  s, gamma, lam, size = 0.5, 0.4, 0.3, 18
  tx = transforms.elastic_group_lasso(s, gamma=gamma, lam=lam)
  u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  new = optax.apply_updates(params, u)
  for f in range(4):
    y = k[..., f].reshape(-1)
    got = np.asarray(new["conv"]["kernel"])[..., f].reshape(-1).astype(np.float64)
    obj = lambda v: 0.5 * np.sum((v - y) ** 2) + s * gamma * np.sqrt(size) * np.linalg.norm(v) + s * lam * np.sum(v**2)
    ref = min(scipy.optimize.minimize(obj, x0, method="Powell", options={"xtol": 1e-10, "ftol": 1e-12}).fun
              for x0 in (np.zeros_like(y), y, 0.5 * y))
    assert obj(got) <= ref + 1e-6
  assert np.all(np.asarray(new["conv"]["kernel"])[..., 0] == 0)
  assert np.all(np.asarray(new["conv"]["kernel"])[..., 1:] != 0)
  np.testing.assert_array_equal(new["conv"]["bias"], 1.0)  # biases untouched


@pytest.mark.slow
def test_linen_params_and_jit():
  model = LinenMLP()
  params = model.init(jax.random.key(0), jnp.ones((1, 5)))
  x = jax.random.normal(jax.random.key(1), (16, 5))
  y = jnp.arange(16) % 3
  lr = 0.1
  tx = optax.chain(optax.sgd(lr), transforms.l0_sparse_group_lasso(lr, l0=1e-3, neuron=0.5))
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(lambda p: xent(model.apply(p, x), y))(params)
    u, state = tx.update(grads, state, params)
    return optax.apply_updates(params, u), state

  for _ in range(10):
    params, state = step(params, state)
  rows = np.all(np.asarray(params["params"]["Dense_1"]["kernel"]) == 0, axis=1)
  assert rows.sum() > 0
  # LayerNorm leaves get the plain sgd update, nothing more
  grads = jax.grad(lambda p: xent(model.apply(p, x), y))(params)
  new, _ = step(params, state)
  plain = optax.apply_updates(params, optax.sgd(lr).update(grads, optax.sgd(lr).init(params))[0])
  for leaf in ("scale", "bias"):
    np.testing.assert_allclose(new["params"]["LayerNorm_0"][leaf], plain["params"]["LayerNorm_0"][leaf], rtol=1e-6)


@pytest.mark.slow
def test_keep_support_holds_zeros_through_adamw():
  model = SmallCNN(nnx.Rngs(2))
  lr = 0.05
  _train(model, optax.chain(optax.sgd(lr), transforms.l0_sparse_group_lasso(lr, l0=1e-3, neuron=0.3, channel=0.3, shape=0.2)), 10)
  before = jax.tree.map(lambda p: np.asarray(p) == 0, nnx.state(model, nnx.Param))
  n_zero = sum(int(z.sum()) for z in jax.tree.leaves(before))
  assert n_zero > 100
  tx = optax.chain(optax.adamw(1e-2, weight_decay=0.1), transforms.keep_support())
  opt = _train(model, tx, 100, seed=5)
  after = nnx.state(model, nnx.Param)
  for z, p in zip(jax.tree.leaves(before), jax.tree.leaves(after)):
    assert np.all(np.asarray(p)[z] == 0)
  # the surviving weights did train
  assert any(np.any(np.asarray(p)[~z] != 0) for z, p in zip(jax.tree.leaves(before), jax.tree.leaves(after)))
  mask = opt.opt_state[1].mask
  assert sum(int((~np.asarray(m)).sum()) for m in jax.tree.leaves(mask)) == n_zero


def test_keep_support_with_explicit_mask_zeroes_masked_weights():
  params = {"fc": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)}}
  mask = {"fc": {"kernel": jnp.array([[True, False, True], [False, True, True]]), "bias": jnp.ones(3, bool)}}
  tx = transforms.keep_support(mask)
  u, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  new = optax.apply_updates(params, u)
  np.testing.assert_array_equal(new["fc"]["kernel"], np.where(mask["fc"]["kernel"], 2.0, 0.0))


def test_bad_input_is_a_clear_error():
  with pytest.raises(ValueError, match="l0 must be a finite non-negative number"):
    transforms.l0_sparse_group_lasso(0.1, l0=-1e-4)
  with pytest.raises(ValueError, match="l0 must be a finite non-negative number, got inf"):
    transforms.l0_sparse_group_lasso(0.1, l0=float("inf"))
  with pytest.raises(ValueError, match="neuron must be a finite non-negative number, got nan"):
    transforms.group_lasso(0.1, neuron=float("nan"))
  with pytest.raises(ValueError, match="gamma must be a finite non-negative number"):
    transforms.elastic_group_lasso(0.1, gamma=-1.0, lam=0.0)
  with pytest.raises(ValueError, match="learning_rate must be a finite non-negative number"):
    transforms.l1(-0.1, l1=1.0)
  with pytest.raises(ValueError, match="conv_grouping"):
    transforms.group_lasso(0.1, channel=1.0, conv_grouping="rows")
  params = {"embed": {"embedding": jnp.ones((10, 4))}, "fc": {"kernel": jnp.ones((4, 2))}}
  with pytest.raises(ValueError, match="'embed/embedding'"):
    transforms.l1(0.1, l1=1.0).init(params)
  tx = transforms.l1(0.1, l1=1.0, rules=[("embedding", "none")])
  with pytest.raises(ValueError, match="needs params"):
    tx.update(params, tx.init(params))
  with pytest.raises(ValueError, match="mask for 'fc/kernel' has shape \\(2, 4\\)"):
    transforms.keep_support({"embed": {"embedding": jnp.ones((10, 4), bool)}, "fc": {"kernel": jnp.ones((2, 4), bool)}}).init(params)
  with pytest.raises(ValueError, match="missing \\['fc/kernel'\\]"):
    transforms.keep_support({"embed": {"embedding": jnp.ones((10, 4), bool)}}).init(params)


@pytest.mark.slow
def test_transform_leaf_results_equal_direct_prox_calls():
  """l0_sgl on a conv kernel is θ on the (in, taps, out) trees; on a dense kernel π on rows."""
  rng = np.random.default_rng(6)
  k = jnp.asarray(rng.normal(size=(3, 3, 4, 6)) * 0.5, jnp.float32)
  w = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  params = {"c": {"kernel": k, "bias": jnp.zeros(6)}, "d": {"kernel": w, "bias": jnp.zeros(3)}}
  s, l0, n, ch, sh = 0.5, 0.05, 0.4, 0.8, 0.3
  tx = transforms.l0_sparse_group_lasso(s, l0=l0, neuron=n, channel=ch, shape=sh)
  u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  new = optax.apply_updates(params, u)
  k64 = np.asarray(k, np.float64)
  for c in range(4):
    tree = k64[:, :, c, :].reshape(9, 6)
    got = np.asarray(new["c"]["kernel"])[:, :, c, :].reshape(9, 6)
    # θ's exactness is tested against enumeration in test_prox; here: the layout is right
    ref = np.asarray(prox.theta(tree.astype(np.float32), s * l0, s * sh, s * ch))
    np.testing.assert_allclose(got, ref, atol=1e-6)
  np.testing.assert_allclose(new["d"]["kernel"], prox.pi(w, s * n, s * l0), atol=1e-6)
  assert groups.leaf_roles(params) == ["bias", "conv", "bias", "dense"]


@pytest.mark.slow
def test_theta_on_stacked_and_padded_trees_equals_theta_per_kernel(monkeypatch):
  """The transform stacks conv trees of similar shapes (zero-padded) into one θ call; the result must be
  θ applied to each kernel alone."""
  from mobileprune_jax import groups, prox

  rng = np.random.default_rng(11)
  shapes = {"a": (3, 3, 4, 16), "b": (3, 3, 6, 13), "c": (1, 1, 8, 20), "d": (1, 1, 5, 32), "e": (3, 3, 1, 7)}
  params = {k: {"kernel": jnp.asarray(rng.normal(size=s) * rng.uniform(0.05, 1.0, size=s), jnp.float32)}
            for k, s in shapes.items()}
  params["dw"] = {"kernel": jnp.asarray(rng.normal(size=(3, 3, 1, 12)) * 0.3, jnp.float32)}
  l0, shape, channel, lr = 2e-3, 0.05, 0.2, 1.0
  from mobileprune_jax.regularisers import catalog

  sparse, flat, theta = catalog.SPARSE_GROUP["l0_sparse_group_lasso"]
  calls = []  # leaves per tree of every θ call: conv (a, b, e) and depthwise (dw) trees of 9 taps share one
  counting = lambda t, *c: (calls.append(t.shape[-2]), theta(t, *c))[1]
  monkeypatch.setitem(catalog.SPARSE_GROUP, "l0_sparse_group_lasso", (sparse, flat, counting))
  tx = transforms.l0_sparse_group_lasso(lr, l0=l0, shape=shape, channel=channel, rules=[(r"^dw/", "depthwise")])
  u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  assert sorted(calls) == [1, 9]
  for name, leaf in params.items():
    value = leaf["kernel"]
    if name == "dw":
      expected = groups.from_depthwise_trees(prox.theta(groups.to_depthwise_trees(value), l0, shape, channel),
                                             value.shape)
    else:
      expected = groups.from_channel_trees(prox.theta(groups.to_channel_trees(value), l0, shape, channel), value.shape)
    got = value + u[name]["kernel"]
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6, atol=1e-7)
    assert np.array_equal(np.asarray(got) == 0, np.asarray(expected) == 0), name  # the same exact zeros


def test_only_what_groups_convs_and_depthwise_kernels_apart_warns_about_depthwise_lookalikes():
  """Two (3, 3, 1, C) kernels no rule names: a penalty grouping convs by input-channel trees and depthwise kernels
  per channel warns (they are likely depthwise); the support mask, element-wise penalties and output-filter groups
  (EGL, conv_grouping="output_filter") treat both alike and do not (the pipeline's retrain phase on MobileNetV2
  printed it)."""
  import warnings

  from mobileprune_jax import regularisers

  rng = np.random.default_rng(0)
  params = {f"dw{i}": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 1, 8)) * (rng.random((3, 3, 1, 8)) > 0.5),
                                             jnp.float32)} for i in range(2)}
  lookalike = r"2 kernels of shape \(k, k, 1, C\) are grouped as convs"
  with pytest.warns(UserWarning, match=lookalike):
    groups.leaf_roles(params)
  with pytest.warns(UserWarning, match=lookalike):
    regularisers.group_lasso(channel=0.1).prox(params, 0.1)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    state = transforms.keep_support().init(params)
    regularisers.l1(0.1).prox(params, 0.1)
    regularisers.elastic_group_lasso(0.1, 0.1).prox(params, 0.1)
    regularisers.group_lasso(channel=0.1, conv_grouping="output_filter").prox(params, 0.1)
  for m, p in zip(jax.tree.leaves(state.mask), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(m), np.asarray(p) != 0)
