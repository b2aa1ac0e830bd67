"""Turn library errors into one-line CLI errors (no tracebacks for bad input)."""
import functools

import click


def one_line_errors(func):
    """Decorator for click commands: ValueError/FileNotFoundError/OSError become `Error: ...` and exit 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise click.ClickException(message) from None

    return wrapper
