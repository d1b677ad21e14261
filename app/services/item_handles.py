"""Opaque item handles: what annotators and evaluators get instead of continuation ids.

Continuation ids follow import and generation order, so within a prompt the lower id is the older
model version, and in the demo the id even names the writer. Judging would not be blind if people
saw them. Each item of a task is therefore shown under a handle made for that one assignment:

    handle = base64url(HMAC-SHA256(key, "<assignment id>:<continuation id>"))[:16]

Stateless (nothing stored, no migration), unordered (handles sort at random, not by version), and
not linkable across assignments (the same continuation has another handle in every assignment).
The server maps a handle back through the assignment's stored item order. The key is derived from
the app's secret key, so every worker process makes the same handles, and nobody without the
secret can make or invert one. Admins and exports are not blind and keep continuation ids.
"""

import base64
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass

HANDLE_LENGTH = 16  # base64 characters: 96 bits


@dataclass(frozen=True)
class ItemHandles:
    key: bytes

    @classmethod
    def from_secret(cls, secret_key: str) -> "ItemHandles":
        # A key of its own, derived from the session key: the session key itself signs nothing else.
        return cls(hmac.new(secret_key.encode(), b"storyloop item handles", hashlib.sha256).digest())

    def handle(self, assignment_id: int, continuation_id: int) -> str:
        digest = hmac.new(self.key, f"{assignment_id}:{continuation_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode()[:HANDLE_LENGTH]

    def continuation_of(self, assignment_id: int, item_order: Iterable[int], handle: str) -> int | None:
        """The continuation behind a handle of this assignment's items, or None if it is none of them."""
        for continuation_id in item_order:
            if hmac.compare_digest(self.handle(assignment_id, continuation_id).encode(), handle.encode()):
                return continuation_id
        return None
