"""The one exception type for user errors: the CLI prints its message on one line and exits non-zero."""


class UserError(Exception):
    """A wrong flag, path or value given by the user; the message says what is wrong and what is valid."""
