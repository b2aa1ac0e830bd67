"""Training loop, learning-rate schedules, layer freezing strategies and checkpoints."""
