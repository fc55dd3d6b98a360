"""The one error type users see for bad input.

The CLI turns it into a single line on stderr and exit code 2; library callers can catch it.
"""


class InputError(ValueError):
    """Bad input (file, format, value) that the user can fix; the message says what and where."""


def first_line(exc: BaseException) -> str:
    """'Class: first line of the message', for one-line reports of foreign exceptions."""
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0]}" if text else exc.__class__.__name__
