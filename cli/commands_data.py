"""CLI verbs (data)."""
COMMANDS = []
