"""The one error type users see for bad input.

The CLI turns it into a single line on stderr and exit code 2; library callers can catch it.
"""


class InputError(ValueError):
    """Bad input (file, format, value) that the user can fix; the message says what and where."""
