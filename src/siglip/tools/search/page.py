"""A self-contained HTML page of search results (`siglip search --html`)."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..inputs.media import media_fragment, split_address
from ..metadata import described
from .thumbnails import THUMBNAIL_SIZE, thumbnail_jpeg

if TYPE_CHECKING:
    from .index import Hit


def results_html(query: str, hits: Sequence[Hit]) -> str:
    """A page of thumbnails (embedded as JPEG data) with rank, score, date taken, camera and path; it opens
    from anywhere, as the index stores absolute paths."""
    cards = "\n".join(_card(rank, hit) for rank, hit in enumerate(hits, start=1))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>siglip search: {html.escape(query)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fill, minmax({THUMBNAIL_SIZE}px, 1fr)); gap: 1rem; }}
figure {{ margin: 0; background: #fff; border-radius: 6px; padding: .5rem; box-shadow: 0 1px 3px #0002; }}
img {{ width: 100%; height: {THUMBNAIL_SIZE}px; object-fit: contain; background: #eee; }}
figcaption {{ font-size: .8rem; overflow-wrap: anywhere; }}
</style></head><body>
<h1>{html.escape(query)}</h1>
<p>{len(hits)} results, best first; score = cosine similarity.</p>
<div class="grid">
{cards}
</div></body></html>
"""


def _card(rank: int, hit: Hit) -> str:
    path = html.escape(hit.path)
    file, _ = split_address(hit.path)  # a video frame links to its video, at its moment
    link = html.escape(Path(file).absolute().as_uri() + media_fragment(hit.path))
    jpeg = thumbnail_jpeg(hit.path)
    image = (
        f'<img src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode("ascii")}" alt="{path}">'
        if jpeg
        else "<p>(cannot be read)</p>"
    )
    date, camera = (html.escape(text) for text in described(hit.metadata))
    return (
        f'<figure><a href="{link}">{image}</a>'
        f"<figcaption><b>#{rank}</b> {hit.score:.4f}<br>{date} &middot; {camera}<br>{path}</figcaption></figure>"
    )
