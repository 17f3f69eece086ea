"""One test over every regulariser: exact prox, and composition with optax's wrappers.

The reference for every case is written here from the array operators of ``prox`` (each checked
against brute force in test_prox.py) and the group layouts of ``groups``, not through
``Regulariser``: a step of a composed optimizer must equal ``reference(p + u_plain, s)``, where
``u_plain`` is what the plain base optimizer (or the wrapper's documented behaviour) gives.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mobileprune_jax import groups, prox, regularisers, transforms

COEFS = {
    "l0": {"l0": 0.3},
    "l1": {"l1": 0.4},
    "l2": {"l2": 0.5},
    "group_lasso": {"neuron": 0.8, "channel": 1.5, "shape": 0.4},
    "l1_sparse_group_lasso": {"l1": 0.2, "neuron": 0.6, "channel": 1.2, "shape": 0.3},
    "l0_sparse_group_lasso": {"l0": 0.15, "neuron": 0.6, "channel": 1.2, "shape": 0.3},
    "elastic_group_lasso": {"gamma": 1.8, "lam": 0.3},
}
NAMES = list(COEFS)


def _params(seed=0):
  k = jax.random.split(jax.random.key(seed), 6)
  return {
      "conv": {"kernel": jax.random.normal(k[0], (3, 3, 4, 6)), "bias": jax.random.normal(k[1], (6,))},
      "fc": {"kernel": jax.random.normal(k[2], (6, 5)), "bias": jax.random.normal(k[3], (5,))},
      "norm": {"scale": 1 + jax.random.normal(k[4], (5,)), "bias": jax.random.normal(k[5], (5,))},
  }


def _grads(seed=1):
  return jax.tree.map(lambda p: jax.random.normal(jax.random.key(seed), p.shape), _params())


def reference(name, params, s, c):
  """The prox of ``name`` at step s, leaf by leaf with the array operators (no Regulariser)."""
  conv, fc = params["conv"], params["fc"]
  rows = lambda op, k: groups.from_neuron_groups(op(groups.to_neuron_groups(k)), k.shape)
  trees = lambda op, k: groups.from_channel_trees(op(groups.to_channel_trees(k)), k.shape)
  cols = lambda op, k: groups.from_output_groups(op(groups.to_output_groups(k)), k.shape)
  if name in ("l0", "l1", "l2"):
    op = {"l0": prox.hard_threshold, "l1": prox.soft_threshold, "l2": prox.ridge}[name]
    new = lambda v: op(v, s * c[name])
    out = {"conv": {k: new(v) for k, v in conv.items()}, "fc": {k: new(v) for k, v in fc.items()}}
  elif name == "elastic_group_lasso":
    shrink = 1 + 2 * s * c["lam"]
    egl = lambda g: prox.group_soft_threshold(g / shrink, s * c["gamma"] * np.sqrt(g.shape[-1]) / shrink)
    out = {"conv": {"kernel": cols(egl, conv["kernel"]), "bias": conv["bias"]},
           "fc": {"kernel": cols(egl, fc["kernel"]), "bias": fc["bias"]}}
  else:
    n, ch, sh, a = (s * c["neuron"], s * c["channel"], s * c["shape"], s * c.get("l1", c.get("l0", 0.0)))
    if name == "group_lasso":
      row, tree = (lambda g: prox.group_soft_threshold(g, n)), (lambda t: prox.tree_group_soft_threshold(t, sh, ch))
      bias = lambda b: prox.soft_threshold(b, n)
    elif name == "l1_sparse_group_lasso":
      row, tree = (lambda g: prox.l1_sgl(g, a, n)), (lambda t: prox.tree_l1_sgl(t, a, sh, ch))
      bias = lambda b: prox.soft_threshold(b, a + n)
    else:
      row, tree = (lambda g: prox.pi(g, n, a)), (lambda t: prox.theta(t, a, sh, ch))
      bias = lambda b: prox.pi(b[:, None], n, a)[:, 0]
    out = {"conv": {"kernel": trees(tree, conv["kernel"]), "bias": bias(conv["bias"])},
           "fc": {"kernel": rows(row, fc["kernel"]), "bias": bias(fc["bias"])}}
  out["norm"] = params["norm"]
  return out


def _close(got, want, atol=2e-6):
  jax.tree.map(lambda g, w: np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=atol), got, want)


def _sgd_point(params, grads, lr):
  return jax.tree.map(lambda p, g: p - lr * g, params, grads)


def _factory(name):
  return getattr(transforms, name)


def _counting_jit(fn):
  """jit(fn) and a list that grows by one at every trace (a new value must not retrace)."""
  traces = []

  def traced(*args, **kwargs):
    traces.append(1)
    return fn(*args, **kwargs)

  return jax.jit(traced), traces


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_prox_of_the_regulariser_equals_the_reference(name):
  params = _params()
  reg = getattr(regularisers, name)(**COEFS[name])
  want = reference(name, params, 0.5, COEFS[name])
  _close(reg.prox(params, 0.5), want)
  zeros = sum(int((np.asarray(v) == 0).sum()) for v in jax.tree.leaves(want))
  assert (zeros > 0) == (name != "l2")
  # the multiplier scales every coefficient
  _close(reg.prox(params, 0.5, multiplier=2.0), reference(name, params, 0.5, {k: 2 * v for k, v in COEFS[name].items()}))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_inject_hyperparams_injects_coefficients_and_learning_rate_without_recompiling(name):
  params, grads = _params(), _grads()
  tx = optax.chain(optax.inject_hyperparams(optax.sgd)(learning_rate=0.5),
                   optax.inject_hyperparams(_factory(name))(learning_rate=0.5, **COEFS[name]))
  state = tx.init(params)
  update, traces = _counting_jit(tx.update)
  u, state = update(grads, state, params)
  _close(optax.apply_updates(params, u), reference(name, _sgd_point(params, grads, 0.5), 0.5, COEFS[name]))
  new = {k: 1.7 * v for k, v in COEFS[name].items()}
  for hyper in (state[0].hyperparams, state[1].hyperparams):
    hyper["learning_rate"] = jnp.float32(0.3)
  state[1].hyperparams.update({k: jnp.float32(v) for k, v in new.items()})
  u, state = update(grads, state, params)
  _close(optax.apply_updates(params, u), reference(name, _sgd_point(params, grads, 0.3), 0.3, new))
  assert len(traces) == 1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_with_prox_reads_the_injected_learning_rate_and_the_plateau_scale(name):
  params, grads = _params(), _grads()
  reg = getattr(regularisers, name)(**COEFS[name])
  base = optax.chain(optax.inject_hyperparams(optax.sgd)(learning_rate=0.5),
                     optax.contrib.reduce_on_plateau(factor=0.5, patience=0, accumulation_size=1))
  tx = transforms.with_prox(base, reg)
  state = tx.init(params)
  update, traces = _counting_jit(tx.update)
  for value in (1.0, 2.0, 3.0):  # the plateau halves the rate; the prox must follow
    u, state = update(grads, state, params, value=jnp.float32(value), penalty_multiplier=jnp.float32(1.0))
    lr = 0.5 * float(state.base[1].scale)
    _close(optax.apply_updates(params, u), reference(name, _sgd_point(params, grads, lr), lr, COEFS[name]))
  assert float(state.base[1].scale) < 1
  state.base[0].hyperparams["learning_rate"] = jnp.float32(0.0)
  u, state = update(grads, state, params, value=jnp.float32(3.0), penalty_multiplier=jnp.float32(1.0))
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))  # lr 0: nothing moves
  state = state._replace(base=(state.base[0]._replace(hyperparams={"learning_rate": jnp.float32(0.4)}), state.base[1]))
  u, state = update(grads, state, params, value=jnp.float32(0.0), penalty_multiplier=jnp.float32(3.0))
  scale = float(state.base[1].scale)
  tripled = {k: 3 * v for k, v in COEFS[name].items()}
  _close(optax.apply_updates(params, u), reference(name, _sgd_point(params, grads, 0.4 * scale), 0.4 * scale, tripled))
  assert len(traces) == 1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_multi_steps_applies_the_prox_to_the_mean_gradient_every_k_steps(name):
  params, g1, g2 = _params(), _grads(1), _grads(2)
  tx = optax.MultiSteps(optax.chain(optax.sgd(0.5), _factory(name)(0.5, **COEFS[name])), every_k_schedule=2)
  state = tx.init(params)
  u, state = tx.update(g1, state, params)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
  u, state = tx.update(g2, state, params)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  _close(optax.apply_updates(params, u), reference(name, _sgd_point(params, mean, 0.5), 0.5, COEFS[name]))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_with_prox_around_multi_steps_applies_the_prox_once_per_real_step(name):
  # the prox must not be applied on the accumulating micro-steps (prox(p) ≠ p for ℓ1 and group terms)
  params, g1, g2 = _params(), _grads(1), _grads(2)
  first = next(iter(COEFS[name]))
  sched = optax.linear_schedule(COEFS[name][first], 3 * COEFS[name][first], 1)  # count 0 → c, count 1 → 3c
  reg = getattr(regularisers, name)(**{**COEFS[name], first: sched})
  tx = transforms.with_prox(optax.MultiSteps(optax.inject_hyperparams(optax.sgd)(learning_rate=0.5), 2), reg)
  update = jax.jit(tx.update)
  state = tx.init(params)
  u, state = update(g1, state, params)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u)) and int(state.count) == 0
  u, state = update(g2, state, params)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, g1, g2)
  _close(optax.apply_updates(params, u), reference(name, _sgd_point(params, mean, 0.5), 0.5, COEFS[name]))
  assert int(state.count) == 1


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_with_prox_around_apply_if_finite_skips_the_prox_and_the_count_on_a_non_finite_step(name):
  params, grads = _params(), _grads()
  first = next(iter(COEFS[name]))
  sched = optax.linear_schedule(COEFS[name][first], 3 * COEFS[name][first], 1)
  reg = getattr(regularisers, name)(**{**COEFS[name], first: sched})
  tx = transforms.with_prox(optax.apply_if_finite(optax.inject_hyperparams(optax.sgd)(learning_rate=0.5), 3), reg)
  update = jax.jit(tx.update)
  state = tx.init(params)
  bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
  u, state = update(bad, state, params)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u)) and int(state.count) == 0
  u, state = update(grads, state, params)
  _close(optax.apply_updates(params, u), reference(name, _sgd_point(params, grads, 0.5), 0.5, COEFS[name]))
  u, state = update(grads, state, params)  # the second real step reads the schedule at count 1
  tripled = {**COEFS[name], first: 3 * COEFS[name][first]}
  _close(optax.apply_updates(params, u), reference(name, _sgd_point(params, grads, 0.5), 0.5, tripled))


@pytest.mark.parametrize("name", NAMES)
def test_masked_regularises_only_the_masked_leaves(name):
  params, grads = _params(), _grads()
  mask = {"conv": {"kernel": False, "bias": False}, "fc": {"kernel": True, "bias": True}, "norm": {"scale": True, "bias": True}}
  tx = optax.chain(optax.sgd(0.5), optax.masked(_factory(name)(0.5, **COEFS[name]), mask))
  u, _ = tx.update(grads, tx.init(params), params)
  got, moved = optax.apply_updates(params, u), _sgd_point(params, grads, 0.5)
  want = reference(name, moved, 0.5, COEFS[name])
  _close(got["fc"], want["fc"])
  _close(got["conv"], moved["conv"])
  _close(got["norm"], moved["norm"])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_apply_if_finite_skips_a_non_finite_step_and_keeps_the_count(name):
  params, grads = _params(), _grads()
  sched = optax.linear_schedule(0.5, 0.25, 1)  # the prox must see count 0 at the first applied step
  tx = optax.apply_if_finite(optax.chain(optax.sgd(sched), _factory(name)(sched, **COEFS[name])), 3)
  state = tx.init(params)
  bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), grads)
  u, state = tx.update(bad, state, params)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u))
  u, state = tx.update(grads, state, params)
  _close(optax.apply_updates(params, u), reference(name, _sgd_point(params, grads, 0.5), 0.5, COEFS[name]))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_vmap_over_coefficients_equals_each_coefficient_alone(name):
  params, grads = _params(), _grads()
  first = next(iter(COEFS[name]))
  values = jnp.asarray([0.0, COEFS[name][first], 3 * COEFS[name][first]])

  def step(value):
    tx = optax.chain(optax.sgd(0.5), _factory(name)(0.5, **{**COEFS[name], first: value}))
    u, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, u)

  batched = jax.vmap(step)(values)
  for i, value in enumerate(np.asarray(values)):
    want = reference(name, _sgd_point(params, grads, 0.5), 0.5, {**COEFS[name], first: float(value)})
    _close(jax.tree.map(lambda b, i=i: b[i], batched), want)


@pytest.mark.parametrize("name", NAMES)
def test_coefficient_schedules_follow_the_count(name):
  params, grads = _params(), _grads()
  first = next(iter(COEFS[name]))
  sched = optax.linear_schedule(0.0, 2 * COEFS[name][first], 2)
  tx = optax.chain(optax.sgd(0.5), _factory(name)(0.5, **{**COEFS[name], first: sched}))
  state = tx.init(params)
  for t in range(3):
    u, state = tx.update(grads, state, params)
    want = reference(name, _sgd_point(params, grads, 0.5), 0.5, {**COEFS[name], first: float(sched(t))})
    _close(optax.apply_updates(params, u), want)


def test_with_prox_refuses_a_base_without_a_readable_learning_rate_or_adam_state():
  params = _params()
  reg = regularisers.l1(0.1)
  with pytest.raises(ValueError, match="cannot find the base optimizer's learning rate"):
    transforms.with_prox(optax.sgd(0.1), reg).init(params)
  with pytest.raises(ValueError, match="1 Adam|0 Adam"):
    transforms.with_prox(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), reg, metric="adam").init(params)
  with pytest.raises(ValueError, match="metric must be one of"):
    transforms.with_prox(optax.sgd(0.1), reg, metric="newton")
  with pytest.raises(ValueError, match="learning_rate must be a finite non-negative number"):
    transforms.with_prox(optax.sgd(0.1), reg, learning_rate=float("nan"))
  with pytest.raises(ValueError, match="step_size must be a scalar or a pytree"):
    reg.prox(params, {"fc": 0.1})
  # an explicit learning rate works with any base
  tx = transforms.with_prox(optax.sgd(0.5), regularisers.l1(0.4), learning_rate=0.5)
  u, _ = tx.update(_grads(), tx.init(params), params)
  _close(optax.apply_updates(params, u), reference("l1", _sgd_point(params, _grads(), 0.5), 0.5, {"l1": 0.4}))


def _fit_with_loss_scale(tx, scale, steps=200):
  """Adam-family runs on a small 2-layer classifier whose loss is multiplied by ``scale``."""
  k = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(k[0], (256, 20))
  y = jnp.argmax(x @ (jax.random.normal(k[1], (20, 3)) * (jnp.arange(20) < 6)[:, None]), -1)
  params = {"fc1": {"kernel": 0.3 * jax.random.normal(k[2], (20, 16)), "bias": jnp.zeros(16)},
            "fc2": {"kernel": 0.3 * jax.random.normal(k[3], (16, 3)), "bias": jnp.zeros(3)}}

  def loss(p):
    logits = jax.nn.relu(x @ p["fc1"]["kernel"] + p["fc1"]["bias"]) @ p["fc2"]["kernel"] + p["fc2"]["bias"]
    return scale * optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, s):
    u, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, u), s

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  nonzero = sum(int((v != 0).sum()) for v in jax.tree.leaves(params))
  dead_rows = int((jnp.abs(params["fc1"]["kernel"]).sum(1) == 0).sum())
  return nonzero, dead_rows


@pytest.mark.slow
def test_adam_metric_prox_responds_to_the_loss_scale_as_l_plus_lambda_r():
  """min c·L + λR ⇔ min L + (λ/c)·R: in Adam's metric, loss ×100 with λ ×100 is the same run, and
  loss ×100 with the same λ is 100× less regularised. The plain chain ignores the loss scale."""
  lr, eps, lam = 1e-2, 1e-10, 1e-2
  adam = lambda: optax.adam(lr, eps=eps)
  metric = lambda m: transforms.with_prox(adam(), regularisers.l0_sparse_group_lasso(l0=lam * m, neuron=lam * m),
                                          learning_rate=lr, metric="adam", eps=eps)
  base = _fit_with_loss_scale(metric(1), 1.0)
  scaled = _fit_with_loss_scale(metric(100), 100.0)
  weaker = _fit_with_loss_scale(metric(1), 100.0)
  plain = lambda: optax.chain(adam(), transforms.l0_sparse_group_lasso(lr, l0=lam, neuron=lam))
  plain_1, plain_100 = _fit_with_loss_scale(plain(), 1.0), _fit_with_loss_scale(plain(), 100.0)
  # (non-zero weights of 387, dead input rows); `pytest -s` prints the README's numbers
  print(f"adam metric: loss x1 {base}, loss x100 + lambda x100 {scaled}, loss x100 {weaker}; "
        f"plain chain: loss x1 {plain_1}, loss x100 {plain_100}")
  assert scaled == base
  assert base[1] >= 5 and weaker[1] == 0 and weaker[0] > 2 * base[0]
  assert plain_1 == plain_100


def test_adam_metric_reads_b2_and_eps_injected_into_the_base():
  params, grads = _params(), _grads()
  reg = regularisers.l1(0.4)
  base = optax.inject_hyperparams(optax.adam)(learning_rate=0.1, b2=0.9, eps=1e-3)
  tx = transforms.with_prox(base, reg, metric="adam")  # b2, eps arguments left at their defaults
  u, _ = tx.update(grads, tx.init(params), params)
  plain = optax.adam(0.1, b2=0.9, eps=1e-3)
  pu, _ = plain.update(grads, plain.init(params), params)
  moved = optax.apply_updates(params, pu)
  steps = jax.tree.map(lambda g: 0.1 / (jnp.abs(g) + 1e-3), grads)  # v̂ = g² after one step
  want = jax.tree.map(lambda v, s: prox.soft_threshold(v, s * 0.4), moved, steps)
  want["norm"] = moved["norm"]
  _close(optax.apply_updates(params, u), want, atol=1e-5)


@pytest.mark.slow
def test_per_coordinate_steps_use_one_metric_per_group():
  """A diagonal metric D = 1/s is made d_g = mean(D) on each group: the group's prox at step 1/d_g."""
  params = _params()
  steps = jax.tree.map(lambda p: jax.random.uniform(jax.random.key(3), p.shape, minval=0.2, maxval=0.8), params)
  c = COEFS["l0_sparse_group_lasso"]
  got = regularisers.l0_sparse_group_lasso(**c).prox(params, steps)
  row_step = 1 / jnp.mean(1 / steps["fc"]["kernel"], axis=1)  # fc kernel (in, out): one group per input row
  want_fc = prox.pi(params["fc"]["kernel"], row_step * c["neuron"], row_step * c["l0"])
  tree_step = 1 / jnp.mean(1 / steps["conv"]["kernel"], axis=(0, 1, 3))  # conv kernel: one tree per input channel
  trees = groups.to_channel_trees(params["conv"]["kernel"])
  want_conv = groups.from_channel_trees(prox.theta(trees, tree_step * c["l0"], tree_step * c["shape"],
                                                   tree_step * c["channel"]), params["conv"]["kernel"].shape)
  b, s = params["fc"]["bias"], steps["fc"]["bias"]  # bias entries alone: their own step
  want_bias = prox.pi(b[:, None], s * c["neuron"], s * c["l0"])[:, 0]
  _close(got["fc"]["kernel"], want_fc)
  _close(got["conv"]["kernel"], want_conv)
  _close(got["fc"]["bias"], want_bias)
  l1 = regularisers.l1(0.4).prox(params, steps)  # element-wise terms: exact per coordinate
  _close(l1["conv"]["kernel"], prox.soft_threshold(params["conv"]["kernel"], steps["conv"]["kernel"] * 0.4))
