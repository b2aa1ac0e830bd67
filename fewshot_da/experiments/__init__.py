"""Experiments built from library stages: the built-in demo and the paper grids."""
