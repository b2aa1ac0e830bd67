"""Segmentation metrics: surface Dice at a tolerance (mm), HD95, ASSD, Dice, pixel error, adjusted Rand index."""
