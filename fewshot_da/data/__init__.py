"""Data layer: datasets -> manifest -> cached slice-major volumes -> splits and budgets -> slice batches."""
