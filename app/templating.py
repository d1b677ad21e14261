"""Jinja2 templates (autoescaped: any text from users or models is rendered escaped)."""

from pathlib import Path

from fastapi.templating import Jinja2Templates

from app.security import csrf_token
from app.words import plural

ROOT = Path(__file__).resolve().parent.parent
templates = Jinja2Templates(directory=ROOT / "templates")
templates.env.globals["csrf_token"] = lambda request: csrf_token(request.session)


def human_size(size: int) -> str:
    """A byte count for people: "20 MB", "1.5 MB", "64 KB"."""
    value, unit = (size / 1024 / 1024, "MB") if size >= 1024 * 1024 else (size / 1024, "KB")
    return f"{value:.1f}".removesuffix(".0") + f" {unit}"


templates.env.filters["human_size"] = human_size
templates.env.filters["plural"] = plural  # {{ n | plural("evaluator") }} -> "1 evaluator", "2 evaluators"
