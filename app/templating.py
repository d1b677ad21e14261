"""Jinja2 templates (autoescaped: any text from users or models is rendered escaped)."""

from pathlib import Path

from fastapi.templating import Jinja2Templates

from app.security import csrf_token

ROOT = Path(__file__).resolve().parent.parent
templates = Jinja2Templates(directory=ROOT / "templates")
templates.env.globals["csrf_token"] = lambda request: csrf_token(request.session)


def megabytes(size: int) -> str:
    """A byte count for people: "20 MB", "0.06 MB"."""
    return f"{size / 1024 / 1024:.2f}".rstrip("0").rstrip(".") + " MB"


templates.env.filters["megabytes"] = megabytes
