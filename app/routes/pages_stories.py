"""Admin page: what each model version wrote, per prompt, side by side (app/services/stories.py)."""

from typing import Annotated

from fastapi import APIRouter, Query, Request

from app.deps import DatabaseDep, PageAdmin
from app.services import stories
from app.templating import templates
from app.validation import BoundedText, DbId, DbInt, QueryIdList

router = APIRouter(prefix="/admin", include_in_schema=False)

PAGE_SIZE = 10  # prompts per page: each shows every version's continuations in full


@router.get("/stories")
def stories_page(request: Request, user: PageAdmin, database: DatabaseDep,
                 q: Annotated[BoundedText(200), Query()] = "",
                 prompt_id: Annotated[DbId | None, Query(ge=1)] = None,
                 version_id: Annotated[QueryIdList, Query()] = [],  # noqa: B006 (FastAPI copies defaults)
                 offset: DbInt = 0,
                 limit: Annotated[int, Query(ge=1, le=stories.MAX_LIMIT)] = PAGE_SIZE):
    page = stories.stories(database, offset=offset, limit=limit, q=q.strip() or None, prompt_id=prompt_id,
                           version_ids=version_id)
    return templates.TemplateResponse(request, "admin/stories.html", {
        "user": user, "flash": request.session.pop("flash", None), "page": "stories", "s": page,
        "q": q, "prompt_id": prompt_id,
    })
