"""The one error of batch scoring: a run that cannot start or go on, said in one line, with its exit code."""

from __future__ import annotations

USAGE = 2
"""Exit code for a problem with what was asked (missing columns, unknown model, a resume that does not match)."""


class BatchError(Exception):
    def __init__(self, message: str, exit_code: int = USAGE):
        super().__init__(message)
        self.exit_code = exit_code
