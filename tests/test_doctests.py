"""The ``Examples:`` in the docstrings of the entry points run as written."""

import doctest
import importlib

import pytest

MODULES = ["mobileprune_jax.proximal", "mobileprune_jax.regularisers.base", "mobileprune_jax.surgery.shrink",
           "mobileprune_jax.surgery.io", "mobileprune_jax.train.budget", "mobileprune_jax.transforms"]


@pytest.mark.parametrize("name", MODULES)
def test_examples_run(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
  assert result.attempted > 0, f"{name} has no examples"


@pytest.mark.slow
def test_export_example_runs():
  pytest.importorskip("tensorflow")
  pytest.importorskip("ai_edge_litert")
  result = doctest.testmod(importlib.import_module("mobileprune_jax.export"), optionflags=doctest.ELLIPSIS)
  assert result.failed == 0 and result.attempted > 0, result
