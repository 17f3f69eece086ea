"""Surgery and coupled units on kernels several layers share: a layer applied twice, a Siamese encoder, an
embedding table that is also the output head. The channels to remove are planted by hand; the expected
widths are written down; the rebuilt model must give the unpruned model's outputs.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mobileprune_jax import regularisers, surgery
from mobileprune_jax.groups import path_to_str

TOL = 1e-5


def _zero(var, index):
  value = np.asarray(var.get_value()).copy()
  value[index] = 0
  var.set_value(jnp.asarray(value))


def _widths(model):
  """Kernel and table shapes by parameter path."""
  return {path_to_str(p): tuple(np.shape(v)) for p, v in jax.tree.leaves_with_path(nnx.state(model, nnx.Param))
          if path_to_str(p).endswith(("kernel", "embedding"))}


def _parity(model, small, x):
  args = x if isinstance(x, tuple) else (x,)
  np.testing.assert_allclose(np.asarray(small(*args)), np.asarray(model(*args)), atol=TOL, rtol=TOL)


class TwiceNet(nnx.Module):
  """One 8-wide dense layer applied twice in a row."""

  def __init__(self, rngs):
    self.inp = nnx.Linear(5, 8, rngs=rngs)
    self.shared = nnx.Linear(8, 8, rngs=rngs)
    self.out = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.inp(x))
    h = nnx.relu(self.shared(h))
    return self.out(nnx.relu(self.shared(h)))


def test_a_layer_applied_twice_loses_a_channel_no_use_reads():
  """Channel i of the shared layer is read at both uses (row i) and its second output by ``out`` (row i). With
  both rows zero for i = 2 and 6, inp's and shared's outputs 2 and 6 go: 8 -> 6 everywhere. Channel 4 has a zero
  shared row but ``out`` reads it: it stays."""
  model = TwiceNet(nnx.Rngs(0))
  for i in (2, 6):
    _zero(model.shared.kernel, (i, slice(None)))
    _zero(model.out.kernel, (i, slice(None)))
  _zero(model.shared.kernel, (4, slice(None)))
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32)
  small = surgery.shrink(model, x)
  assert _widths(small) == {"inp/kernel": (5, 6), "out/kernel": (6, 3), "shared/kernel": (6, 6)}
  _parity(model, small, x)


class Siamese(nnx.Module):
  """One encoder on two inputs; a head on both encodings side by side."""

  def __init__(self, rngs):
    self.enc = nnx.Linear(6, 10, rngs=rngs)
    self.head = nnx.Linear(20, 3, rngs=rngs)

  def __call__(self, a, b):
    return self.head(jnp.concatenate([nnx.relu(self.enc(a)), nnx.relu(self.enc(b))], -1))


def test_a_siamese_encoder_loses_a_feature_only_when_neither_branch_is_read():
  model = Siamese(nnx.Rngs(0))
  _zero(model.head.kernel, ([2, 12], slice(None)))  # feature 2 of both branches: unread
  _zero(model.head.kernel, (4, slice(None)))  # feature 4 of the first branch only: the second still reads it
  rng = np.random.default_rng(0)
  x = (jnp.asarray(rng.normal(size=(4, 6)), jnp.float32), jnp.asarray(rng.normal(size=(4, 6)), jnp.float32))
  small = surgery.shrink(model, x)
  assert _widths(small) == {"enc/kernel": (6, 9), "head/kernel": (18, 3)}
  _parity(model, small, x)


def test_coupled_units_put_both_branches_rows_of_a_siamese_feature_in_one_unit():
  """Reader units: head rows j and 10 + j read the same (joined) encoder feature, so they form one unit; the
  encoder reads the model's inputs, so its entries are fixed leaves, in no unit."""
  model = Siamese(nnx.Rngs(0))
  x = (jnp.ones((2, 6)), jnp.ones((2, 6)))
  units = regularisers.group_lasso(neuron=0.1).for_model(model, x).units
  head_units = sorted(sorted(set(u["head/kernel"] // 3)) for u in units.units if "head/kernel" in u)
  assert head_units == [[j, 10 + j] for j in range(10)]
  assert not any("enc/kernel" in u for u in units.units)


class TiedHead(nnx.Module):
  """Token embedding, one MLP residual block, logits from the same table (``attend``)."""

  def __init__(self, rngs):
    self.emb = nnx.Embed(20, 12, rngs=rngs)
    self.fc1 = nnx.Linear(12, 24, rngs=rngs)
    self.fc2 = nnx.Linear(24, 12, rngs=rngs)

  def __call__(self, tokens):
    h = self.emb(tokens)
    h = h + self.fc2(nnx.relu(self.fc1(h)))
    return self.emb.attend(h)


def test_a_tied_embedding_head_loses_a_stream_channel_it_does_not_read(tmp_path):
  """Stream channel 5 is written by the table (column 5) and fc2, read by fc1 (row 5) and the head (column 5 of
  the same table). With the table's column and fc1's row zero nothing reads it: the table keeps 11 columns, fc1
  11 rows, fc2 11 outputs. Channel 7 has a zero fc1 row but the head reads it: it stays."""
  model = TiedHead(nnx.Rngs(0))
  _zero(model.emb.embedding, (slice(None), 5))
  _zero(model.fc1.kernel, (5, slice(None)))
  _zero(model.fc1.kernel, (7, slice(None)))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 20, (3, 7)))
  small = surgery.shrink(model, tokens)
  assert _widths(small) == {"emb/embedding": (20, 11), "fc1/kernel": (11, 24),
                            "fc2/kernel": (24, 11)}
  _parity(model, small, tokens)
  surgery.save(tmp_path, small, factory="tied_head", kwargs={}, cuts=surgery.plan(model, tokens).cuts)  # cut once
  loaded = surgery.load(tmp_path, factories={"tied_head": lambda: TiedHead(nnx.Rngs(1))})
  _parity(model, loaded, tokens)


class TwoViews(nnx.Module):
  """One (4, 3, 2) parameter read as a (4 -> 3·2) map and as a (4·3 -> 2) map: the uses do not line up."""

  def __init__(self, rngs):
    self.inp = nnx.Linear(5, 4, rngs=rngs)
    self.k = nnx.Param(jax.random.normal(rngs.params(), (4, 3, 2)))
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.inp(x))  # (B, 4)
    a = jnp.einsum("bi,ijk->bjk", h, self.k[...]).reshape(x.shape[0], 6)
    b = jnp.einsum("bij,ijk->bk", jnp.broadcast_to(h[:, :, None], (x.shape[0], 4, 3)), self.k[...])
    return self.head(jnp.concatenate([a, b], -1))


def test_a_kernel_whose_uses_do_not_line_up_is_kept_whole_and_said_so():
  """inp's output 1 is read only through k[1] (zero): it could go if k were one layer, but k's two uses index its
  features along different axes, so the kernel and the channels it meets stay; the report says why."""
  model = TwoViews(nnx.Rngs(0))
  _zero(model.k, 1)
  _zero(model.head.kernel, (7, slice(None)))  # b's output 1 is unread
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32)
  small, report = surgery.shrink_with_report(model, x)
  assert _widths(small)["inp/kernel"] == (5, 4) and np.shape(small.k[...]) == (4, 3, 2)
  assert any("'k' is used by 2 layers along different axes" in note for note in report.notes), report.notes
  _parity(model, small, x)


def test_cmf_stores_a_shared_kernel_once():
  """DEGL's CMF by hand for TwiceNet: inp 5x8, shared 8x8 stored once but producing 8 outputs at each use, out 8x3."""
  from mobileprune_jax import metrics

  stats = metrics.layer_stats(TwiceNet(nnx.Rngs(0)), jnp.zeros((1, 5)))
  assert metrics.cmf_bytes(stats) == 4 * ((40 + 8) + (64 + 8) + 8 + (24 + 3))


def test_degl_threshold_counts_a_shared_filter_once():
  """Feature 5 of the stream through the shared layer (inp's output 5, shared's output 5 at both uses) falls under
  the threshold: two filters go (inp's and shared's), not three, and every kernel is 7 wide after surgery."""
  from mobileprune_jax.train import actions

  model = TwiceNet(nnx.Rngs(1))
  for var in (model.inp.kernel, model.shared.kernel):
    value = np.asarray(var.get_value()).copy()
    value[:, 5] *= 1e-4
    var.set_value(jnp.asarray(value))
  reference = nnx.clone(model)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5)), jnp.float32)
  assert actions.degl_threshold(model, x, 1e-2, "out/kernel", coupled=True)["degl_removed_units"] == 2
  small = surgery.shrink(model, x)
  assert _widths(small) == {"inp/kernel": (5, 7), "out/kernel": (7, 3), "shared/kernel": (7, 7)}
  _parity(model, small, x)
  # the removed feature was nearly silent: the thresholded model stays close to the original
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(reference(x)), atol=1e-2)


def _tokens(n=3, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 20, (n, 7)))


def test_a_tied_table_joins_the_stream_units_it_reads():
  """Group lasso on TiedHead's coupled units, by hand: stream feature j is read by fc1 (row j) and by the head
  (column j of the table), so its unit is those 24 + 20 entries, weight √2, shrunk by one factor
  (1 − s·neuron·√2/‖unit‖)_+. Before, the table was left out (role "none") and no stream feature could go."""
  model = TiedHead(nnx.Rngs(3))
  step, neuron = 0.5, 0.4
  reg = regularisers.group_lasso(neuron=neuron, channel=0.1).for_model(model, _tokens())
  params = nnx.state(model, nnx.Param)
  emb, fc1 = np.asarray(model.emb.embedding.get_value()), np.asarray(model.fc1.kernel.get_value())
  out = reg.prox(params, step)
  new_emb, new_fc1 = np.asarray(out["emb"]["embedding"].get_value()), np.asarray(out["fc1"]["kernel"].get_value())
  for j in range(12):
    unit = np.concatenate([emb[:, j], fc1[j]])
    factor = max(0.0, 1 - step * neuron * np.sqrt(2) / np.linalg.norm(unit))
    np.testing.assert_allclose(new_emb[:, j], factor * emb[:, j], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(new_fc1[j], factor * fc1[j], rtol=1e-5, atol=1e-7)
  assert reg.roles(params)[0] == "dense"


def test_a_tied_table_the_user_leaves_out_stays_out():
  model = TiedHead(nnx.Rngs(3))
  reg = regularisers.group_lasso(neuron=0.4, rules=[("^emb/embedding$", "none")]).for_model(model, _tokens())
  assert "emb/embedding" not in reg.units.paths
  params = nnx.state(model, nnx.Param)
  np.testing.assert_array_equal(np.asarray(reg.prox(params, 0.5)["emb"]["embedding"].get_value()),
                                np.asarray(model.emb.embedding.get_value()))


def test_training_a_tied_head_with_coupled_units_narrows_its_stream():
  """Prox-SGD with coupled group lasso on next-token-like labels: some stream features die in the table's columns
  and fc1's rows together, so surgery narrows the table, fc1's inputs and fc2's outputs; exact outputs."""
  import optax

  from mobileprune_jax import transforms

  model = TiedHead(nnx.Rngs(0))
  reg = regularisers.group_lasso(neuron=0.1, channel=0.1).for_model(model, _tokens())
  optimizer = nnx.Optimizer(model, transforms.with_prox(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1), reg),
                            wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, tokens):
    def loss(m):
      return optax.softmax_cross_entropy_with_integer_labels(m(tokens), (tokens + 1) % 20).mean()

    value, grads = nnx.value_and_grad(loss)(model)
    optimizer.update(model, grads)
    return value

  for i in range(150):
    step(model, optimizer, _tokens(16, seed=i))
  small = surgery.shrink(model, _tokens())
  width = _widths(small)["emb/embedding"][1]
  assert 0 < width < 12
  assert _widths(small)["fc1/kernel"][0] == width and _widths(small)["fc2/kernel"][1] == width
  _parity(model, small, _tokens(5, seed=99))


class TiedHeadAfterLayerNorm(TiedHead):
  """TiedHead with a LayerNorm before the head: the head reads features surgery must keep."""

  def __init__(self, rngs):
    super().__init__(rngs)
    self.ln = nnx.LayerNorm(12, rngs=rngs)

  def __call__(self, tokens):
    h = self.emb(tokens)
    h = h + self.fc2(nnx.relu(self.fc1(h)))
    return self.emb.attend(self.ln(h))


def test_a_tied_table_whose_head_reads_a_layernormed_stream_stays_unpenalised():
  model = TiedHeadAfterLayerNorm(nnx.Rngs(3))
  reg = regularisers.l0_sparse_group_lasso(1e-3, neuron=0.4).for_model(model, _tokens())
  params = nnx.state(model, nnx.Param)
  assert "emb/embedding" not in reg.units.paths
  np.testing.assert_array_equal(np.asarray(reg.prox(params, 0.5)["emb"]["embedding"].get_value()),
                                np.asarray(model.emb.embedding.get_value()))


def test_palm_takes_a_shared_kernel_as_one_block():
  """The trace lists a layer applied twice at both uses; PALM's sweep visits its block once (at the first use)."""
  from mobileprune_jax.train import palm

  paths = ["inp/bias", "inp/kernel", "out/bias", "out/kernel", "shared/bias", "shared/kernel"]
  listed = ["inp/kernel", "shared/kernel", "shared/kernel", "out/kernel"]
  assert palm.layer_blocks(paths, listed) == [[1, 0], [5, 4], [3, 2]]

  class Net(TwiceNet):
    def __call__(self, x, train=False):
      return super().__call__(x)

  x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 5)), jnp.float32)
  y = jnp.asarray(np.arange(16) % 3)
  reg = regularisers.l0_sparse_group_lasso(1e-3, neuron=0.05)
  once, twice = Net(nnx.Rngs(0)), Net(nnx.Rngs(0))
  palm.make_palm_step(once, reg, ["inp/kernel", "shared/kernel", "out/kernel"])(once, x, y)
  palm.make_palm_step(twice, reg, listed)(twice, x, y)
  for a, b in zip(jax.tree.leaves(nnx.state(once, nnx.Param)), jax.tree.leaves(nnx.state(twice, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
