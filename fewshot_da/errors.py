"""Errors for bad user input: one line naming the file (or option) and the problem."""


class InputError(ValueError):
    """Bad input (file, option or data); str() is a one-line message that names it and the problem."""
