"""CLI verbs (experiments)."""
COMMANDS = []
