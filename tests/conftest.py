"""Test set-up: 8 host CPU devices for the sharding tests (must precede JAX's start-up)."""

import os
import sys

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

sys.path.insert(0, os.path.dirname(__file__))  # tests/brute_force.py


import gc  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_code():
  """Drops JAX's compiled executables after each test module.

  Every executable holds memory mappings; one process running the whole suite otherwise grows past
  the kernel's map limit (vm.max_map_count, 65,530 by default) and XLA's compiler crashes.
  """
  yield
  import jax

  jax.clear_caches()
  gc.collect()
