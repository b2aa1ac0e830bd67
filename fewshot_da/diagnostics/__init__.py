"""Label-free diagnostics of a trained model on target data (the shift map)."""
from .shift_map import aggregate_units, activation_stats, gaussian_divergence, shift_map

__all__ = ["aggregate_units", "activation_stats", "gaussian_divergence", "shift_map"]
