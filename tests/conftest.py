"""Test set-up: 8 host CPU devices for the sharding tests (must precede JAX's start-up)."""

import os
import sys

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()

sys.path.insert(0, os.path.dirname(__file__))  # tests/brute_force.py
