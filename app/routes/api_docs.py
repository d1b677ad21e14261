"""The API docs page (/api/docs): Swagger UI from our own static files, started by a static script,
so it needs no CDN and satisfies the Content-Security-Policy (FastAPI's own page loads Swagger UI from
a CDN and starts it with an inline script)."""

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from app.templating import templates

router = APIRouter(include_in_schema=False)


@router.get("/api/docs", response_class=HTMLResponse)
def api_docs(request: Request):
    return templates.TemplateResponse(request, "api_docs.html", {"openapi_url": request.app.openapi_url})
