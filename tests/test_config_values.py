"""Unset config values are None (the old sentinels still mean the same), and the method registry drives the phases."""

import pytest

from mobileprune_jax import config as config_lib
from mobileprune_jax import methods
from mobileprune_jax.train.loop import config_fingerprint
from mobileprune_jax.train.phases import build_phases

KERNELS = ["conv1/kernel", "conv2/kernel", "fc1/kernel", "fc2/kernel"]


def _cfg(*overrides):
  cfg = config_lib.load_config(config_lib.pathlib.Path(__file__).parents[1] / "experiments" / "configs" / "quick.py")
  config_lib.apply_overrides(cfg, list(overrides))
  return cfg


def test_unset_values_are_none_and_old_sentinels_keep_the_fingerprint():
  cfg = _cfg()
  for key in config_lib.SENTINELS:
    node = cfg
    *parents, leaf = key.split(".")
    for p in parents:
      node = node[p]
    assert node[leaf] is None, key
  old = _cfg(*[f"{k}={v}" for k, v in config_lib.SENTINELS.items()])  # a checkpoint written before the change
  assert config_fingerprint(old) == config_fingerprint(cfg)
  assert config_fingerprint(_cfg("train_subset=500")) != config_fingerprint(cfg)
  config_lib.validate(old)
  config_lib.validate(cfg)


def test_a_set_value_can_be_unset_again_from_the_command_line():
  cfg = _cfg("train_subset=500", "init_from=somewhere/model")
  config_lib.apply_overrides(cfg, ["train_subset=None", "init_from=None"])
  assert cfg.train_subset is None and cfg.init_from is None


@pytest.mark.parametrize("name", sorted(methods.REGISTRY))
def test_the_registry_says_which_methods_a_budget_steers(name):
  cfg = _cfg(f"method={name}", "coef.coupled=False")
  phases = build_phases(cfg, KERNELS, None)
  steered = any(p.controlled for p in phases)
  assert steered == methods.REGISTRY[name].budget == (name in config_lib.BUDGET_METHODS)
  if not methods.REGISTRY[name].budget:
    with pytest.raises(config_lib.ConfigError, match="a budget needs a method with a sparsifying penalty"):
      config_lib.validate(_cfg(f"method={name}", "budget.params=0.1"))
  expected = {"dense": ["pretrain"], "magnitude": ["pretrain", "threshold", "retrain/1"]}.get(name)
  if expected:
    assert [p.name for p in phases] == expected
