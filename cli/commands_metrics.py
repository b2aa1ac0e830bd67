"""CLI verbs (metrics)."""
COMMANDS = []
