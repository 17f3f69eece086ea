"""Surgery: trace → channel dependency graph → cuts → a physically smaller NNX model."""

from mobileprune_jax.surgery.shrink import (
    LayerChange,
    ShrinkReport,
    apply_cuts,
    count_params,
    max_output_diff,
    plan,
    shrink,
    shrink_with_report,
)
from mobileprune_jax.surgery.trace import Graph, Layer, trace

__all__ = ["Graph", "Layer", "LayerChange", "ShrinkReport", "apply_cuts", "count_params", "max_output_diff", "plan",
           "shrink", "shrink_with_report", "trace"]
