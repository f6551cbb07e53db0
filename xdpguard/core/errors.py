"""Errors the controller reports to the operator as one line (exit code 2)."""


class UserError(Exception):
    """Bad input or a state that forbids the request; nothing was changed."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
