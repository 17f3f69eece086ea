"""A config section's ``momentum`` means the same for both optimizers: 0 is no momentum (Adam's b1 = 0)."""

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mobileprune_jax.train import phases


def _section(optimizer, momentum):
  return ml_collections.ConfigDict(dict(optimizer=optimizer, lr=0.1, momentum=momentum, weight_decay=0.0,
                                        schedule="constant"))


@pytest.mark.parametrize("optimizer,momentum,reference", [
    ("adam", 0.0, optax.adam(0.1, b1=0.0)), ("adam", 0.5, optax.adam(0.1, b1=0.5)),
    ("sgd", 0.0, optax.sgd(0.1)), ("sgd", 0.9, optax.sgd(0.1, momentum=0.9))])
def test_momentum_is_sgds_momentum_or_adams_b1(optimizer, momentum, reference):
  tx = phases._optimizer(_section(optimizer, momentum), total_steps=10)
  params = jnp.array([1.0, -2.0])
  state, ref_state = tx.init(params), reference.init(params)
  for g in ([1.0, 0.5], [-3.0, 0.25], [0.5, 0.5]):  # b1 = 0 vs 0.9 differ from the second step on
    u, state = tx.update(jnp.array(g), state, params)
    r, ref_state = reference.update(jnp.array(g), ref_state, params)
    np.testing.assert_allclose(u, r, rtol=1e-6)
