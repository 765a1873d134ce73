"""A synthetic world where the truth is known: shapes images, their full descriptions, noisy
alt-text, and class labels; used to train and evaluate captioners and CLIP offline."""

from .world import ShapeSample, ShapesWorld, write_shapes_shards

__all__ = ["ShapeSample", "ShapesWorld", "write_shapes_shards"]
