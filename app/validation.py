"""Bounded input types: what a route accepts (path, query, form or JSON body) is what both databases
can store, so that bad input is a 422 naming the field and never an error from the database (a 500).

- integers (ids, offsets, seeds): 0 .. 2^31-1, the range of PostgreSQL's `integer` columns (SQLite
  would take up to 2^63-1; one limit keeps both databases alike);
- texts: no NUL characters (PostgreSQL refuses them in text) and no lone surrogates (they cannot be
  encoded as UTF-8); bounded texts are no longer than their column;
- id lists: at most MAX_ID_LIST ids (each id becomes one bound parameter of a query, and PostgreSQL
  allows 65,535 per statement).

Pydantic refuses a value outside these bounds; the app's handler answers 422 with the field in
`errors[].loc` (app/main.py). Form fields typed by hand (ids in a text box) go through parse_id_list.
"""

import re
from typing import Annotated

from pydantic import AfterValidator, Field, TypeAdapter, ValidationError

from app.services.errors import Invalid

DB_INT_MAX = 2**31 - 1
MAX_ID_LIST = 10_000

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_ASCII_ID = re.compile("[0-9]+")


def storable_text(value: str) -> str:
    """The text, if a database can store it; else ValueError saying what is wrong."""
    found = _UNSTORABLE.search(value)
    if found:
        what = "a NUL character" if found.group() == "\x00" else "a lone surrogate (not valid Unicode)"
        raise ValueError(f"must not contain {what}")
    return value


DbInt = Annotated[int, Field(ge=0, le=DB_INT_MAX)]  # a count, offset or seed stored in an integer column
DbId = Annotated[int, Field(ge=0, le=DB_INT_MAX)]  # a row id (no row has 0; it is simply not found)
IdList = Annotated[list[DbId], Field(max_length=MAX_ID_LIST)]
# Ids repeated in a query string (?version_id=1&version_id=2): few enough that the longest such URL
# ("version_id=2147483647&" 22 bytes a time) stays far within what the HTTP server reads of a request
# line (64 KiB: uvicorn answers a longer one 400 itself, before the app and outside the API's schema).
MAX_QUERY_IDS = 1_000
QueryIdList = Annotated[list[DbId], Field(max_length=MAX_QUERY_IDS)]
Text = Annotated[str, AfterValidator(storable_text)]  # a text column without a length (Text)


def BoundedText(max_length: int, min_length: int = 0):  # noqa: N802 (used like a type: BoundedText(200))
    """A text of at most `max_length` characters, for a String(max_length) column."""
    return Annotated[str, Field(min_length=min_length, max_length=max_length), AfterValidator(storable_text)]


def parse_id_list(text: str, field: str) -> list[int]:
    """'1, 2 3' -> [1, 2, 3] from a form's text box. Only ASCII digits count (Python's int() would take
    '١٢' or refuse '²' with an error); every id in DbId's range, at most MAX_ID_LIST of them."""
    parts = [p for p in re.split(r"[\s,;]+", text.strip()) if p]

    def refuse(message: str):
        raise Invalid(f"{field}: {message}", [{"loc": ["body", field], "msg": message}])

    bad = next((p for p in parts if not _ASCII_ID.fullmatch(p)), None)
    if bad is not None:
        refuse(f"ids must be whole numbers (digits 0-9) separated by commas or spaces, not {bad[:20]!r}")
    if len(parts) > MAX_ID_LIST:
        refuse(f"at most {MAX_ID_LIST} ids")
    ids = [int(p) for p in parts]
    if any(i > DB_INT_MAX for i in ids):
        refuse(f"ids must be at most {DB_INT_MAX}")
    return ids


_DB_INT = TypeAdapter(DbInt)


def parse_db_int(text: str, field: str) -> int | None:
    """A form field read by hand (fields that vary with the form) as a DbInt, as a typed Form field
    would be: None when empty; Invalid naming the field for anything else that is not one, such as a
    superscript '²' (str.isdigit() takes it, int() refuses it)."""
    text = text.strip()
    if not text:
        return None
    try:
        return _DB_INT.validate_python(text)
    except ValidationError:
        raise Invalid(f"{field}: a whole number from 0 to {DB_INT_MAX}",
                      [{"loc": ["body", field], "msg": f"a whole number from 0 to {DB_INT_MAX}"}]) from None
