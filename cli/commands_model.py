"""CLI verbs (model)."""
COMMANDS = []
