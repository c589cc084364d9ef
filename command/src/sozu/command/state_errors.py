"""Why a request was refused by the state: each error names the object concerned."""

from __future__ import annotations

from typing import ClassVar


class StateError(Exception):
    """A request the state refuses; the state is left unchanged."""

    KIND: ClassVar[str] = "StateError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return f"{self.KIND}: {self.message}"


class NotFound(StateError):
    KIND: ClassVar[str] = "NotFound"


class AlreadyExists(StateError):
    """The object exists; `identical` says whether the request carries the same object."""

    KIND: ClassVar[str] = "AlreadyExists"

    def __init__(self, message: str, *, identical: bool) -> None:
        super().__init__(message)
        self.identical = identical


class NoChange(StateError):
    KIND: ClassVar[str] = "NoChange"


class InvalidValue(StateError):
    KIND: ClassVar[str] = "InvalidValue"


class Undispatchable(StateError):
    """A supervisor-only request (save, load, upgrade, ...) that has no effect on a state."""

    KIND: ClassVar[str] = "Undispatchable"
