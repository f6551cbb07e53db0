"""Process exit codes (named, as httpie's status.py does)."""

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    ERROR = 1  # an unexpected failure (a bug or the kernel said no for a reason we did not foresee)
    BAD_INPUT = 2  # invalid input or a state that forbids the request; nothing changed
    INTERRUPTED = 130  # Ctrl-C
