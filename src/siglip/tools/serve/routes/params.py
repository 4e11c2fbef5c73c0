"""What the request bodies of the routes have in common."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_TEXT_CHARS = 10_000
Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class Params(BaseModel):
    """Request parameters: a field the route does not know is refused, not ignored."""

    model_config = ConfigDict(extra="forbid")
