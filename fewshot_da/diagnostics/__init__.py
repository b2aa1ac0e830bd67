"""Label-free diagnostics of a trained model on target data (the shift map)."""
from .shift_map import activation_stats, aggregate_units, gaussian_divergence, shift_map

__all__ = ["activation_stats", "aggregate_units", "gaussian_divergence", "shift_map"]
