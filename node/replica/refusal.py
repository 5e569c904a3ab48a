"""Why a command did not apply.

A state machine refuses a command by raising `Refusal` (a code, a message for a
person, details for a program); applying turns it into the command's outcome on
every replica, and the node that proposed the command raises `Refused` to its
caller.  The HTTP layer maps codes to statuses in one table (node/http/errors.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class RefusalCode(enum.StrEnum):
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"  # the target is in the wrong state (a running task's cancel)
    INVALID = "invalid"  # a value out of range, a bad document
    BAD_COMMAND = "bad_command"  # a log entry that is not a command: it changes nothing
    STALE_ATTEMPT = "stale_attempt"  # an executor's report about an attempt superseded since
    IDEMPOTENCY_MISMATCH = "idempotency_mismatch"  # a key reused for another request
    FORBIDDEN = "forbidden"
    QUOTA_EXCEEDED = "quota_exceeded"  # the user has as many tasks waiting as allowed
    INTERNAL = "internal"  # applying raised: a bug, refused the same way everywhere


@dataclass(frozen=True, slots=True)
class Refusal(Exception):
    code: RefusalCode
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def to_json(self) -> dict[str, Any]:
        return {"code": str(self.code), "message": self.message, "details": self.details}


class Refused(Exception):
    """Raised by Replica.propose when the committed command was refused."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal

    @property
    def code(self) -> RefusalCode:
        return self.refusal.code


def refuse(code: RefusalCode, message: str, **details: Any) -> Refusal:
    return Refusal(code, message, details)
