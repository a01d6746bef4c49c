"""The one error type of core.prompt."""

from __future__ import annotations


class PromptError(ValueError):
    """A prompt chant cannot use (A1111 itself would crash on it, or it is over a limit).

    ``column`` is 1-based and counts characters of the prompt as the user wrote it.
    """

    def __init__(self, message: str, column: int) -> None:
        super().__init__(f"{message} (column {column})")
        self.message = message
        self.column = column
