"""Error responses for the OpenAPI schema: the statuses each API route really sends, with the bodies
that app/main.py's handlers (and its body-size middleware) write for them."""

from typing import Any

from fastapi import Response
from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    """401, 403, 404, 409, 413, 429 and 503. `errors` comes with refusals from the services (app/services/errors.py)."""

    detail: str = Field(description="what went wrong, for a person to read")
    errors: list[dict[str, Any]] = Field([], description="details, when there are any")


class InvalidBody(BaseModel):
    """422: the request, or a value in it, is invalid."""

    detail: str = Field(description='"invalid request" for a request that failed validation, else the refusal')
    errors: list[dict[str, Any]] = Field(
        description='one per problem: {"loc": [...], "msg": ...} for a request that failed validation, loc naming '
                    'the field (e.g. ["body", "name"] or ["query", "offset"]); an import\'s errors are '
                    '{"line": ..., "field": ..., "message": ...}')


_WHAT = {
    401: "no bearer token, or an invalid or revoked one (login: wrong username or password)",
    403: "admins only",
    404: "no such resource (or not yours)",
    409: "conflicts with the current state (see detail)",
    413: "the request body is larger than the server's upload limit",
    422: "invalid request: `errors` names the fields",
    429: "too many failed logins for the account or from the address; see the Retry-After header",
    503: "the database is briefly unavailable (restarting, disk full): retry after the Retry-After header's "
         "seconds, with the same idempotency key",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route or router: these error statuses with their real bodies."""
    return {code: {"model": InvalidBody if code == 422 else ErrorBody, "description": _WHAT[code]} for code in codes}


def csv_download(text: str, filename: str) -> Response:
    """A CSV file that browsers save under `filename` (and curl -OJ too)."""
    return Response(text, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})
