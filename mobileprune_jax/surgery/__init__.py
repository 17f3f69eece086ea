"""Surgery: trace → channel dependency graph → cuts → a physically smaller NNX model."""

from mobileprune_jax.surgery.depgraph import Graph, Layer, trace
from mobileprune_jax.surgery.io import (
    ModelFileError,
    build,
    build_original,
    load,
    load_expanded,
    read_spec,
    register,
    save,
)
from mobileprune_jax.surgery.shrink import (
    LayerChange,
    ShrinkReport,
    apply_cuts,
    check_finite,
    count_params,
    max_output_diff,
    plan,
    shrink,
    shrink_with_report,
)

__all__ = ["ModelFileError", "build", "build_original", "load", "load_expanded", "read_spec", "register", "save", "check_finite", "Graph", "Layer", "LayerChange", "ShrinkReport", "apply_cuts", "count_params", "max_output_diff", "plan",
           "shrink", "shrink_with_report", "trace"]
