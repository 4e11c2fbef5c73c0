"""The web page at `/` and its static files (search and classification in the browser)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = resources.files(__package__.rpartition(".")[0]) / "static"
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> HTMLResponse:
    return HTMLResponse(
        (STATIC / "index.html").read_text(encoding="utf-8"), headers={"Content-Security-Policy": _CSP}
    )


def static_files() -> StaticFiles:
    """The page's scripts and styles, mounted at `/static`."""
    return StaticFiles(directory=str(STATIC))
