"""Test set-up: 8 host CPU devices for the sharding tests (must precede JAX's start-up)."""

import os
import sys
import tempfile

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

# One persistent XLA compilation cache for the whole suite: pytest-xdist workers and the runs the tests start as
# subprocesses (kill/resume chains, the CLI) compile the same programs again and again. Entries are keyed by the
# program, JAX version and flags (never stale); a damaged entry (a process killed mid-write) is a warning and a
# recompile. MOBILEPRUNE_JAX_TEST_CACHE=0 turns it off.
if os.environ.get("MOBILEPRUNE_JAX_TEST_CACHE", "1") != "0":
  os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                        os.path.join(tempfile.gettempdir(), f"mobileprune_jax-tests-xla-cache-{os.getuid()}"))
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

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
