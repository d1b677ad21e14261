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
        return cls(hmac.digest(secret_key.encode(), b"storyloop item handles", "sha256"))

    def handle(self, assignment_id: int, continuation_id: int) -> str:
        digest = hmac.digest(self.key, f"{assignment_id}:{continuation_id}".encode(), "sha256")
        return base64.urlsafe_b64encode(digest).decode()[:HANDLE_LENGTH]

    def continuations_by_handle(self, assignment_id: int, item_order: Iterable[int]) -> dict[str, int]:
        """This assignment's items by handle, to map what a person sends back. (A plain lookup: the
        person was shown every valid handle of the assignment, so there is nothing to guess.)"""
        return {self.handle(assignment_id, continuation_id): continuation_id for continuation_id in item_order}
