"""Addresses of the rows a collection gives: an image is its file's path; a frame of a video is
`<path>#t=<seconds>`, a W3C media fragment, so that a link to it opens the video at that moment.

This module owns the address rule: the embedding outputs, the index's records, search results, thumbnails,
metadata and the server all build and read frame addresses here, never by hand.
"""

from __future__ import annotations

import re

_FRAME = re.compile(r"^(?P<path>.+)#t=(?P<seconds>\d+(?:\.\d+)?)$", re.DOTALL)


def frame_address(path: str, seconds: float) -> str:
    """The address of the frame of video `path` at `seconds` from its start (millisecond precision)."""
    if seconds < 0:
        raise ValueError(f"a frame time cannot be negative: {seconds} s in '{path}'")
    return f"{path}#t={seconds:.3f}"


def split_address(address: str) -> tuple[str, float | None]:
    """The file of an address and the time of its frame in seconds (None for an image file)."""
    match = _FRAME.match(address)
    if match is None:
        return address, None
    return match["path"], float(match["seconds"])


def media_fragment(address: str) -> str:
    """The part of a link to an address's file that opens it at the frame: `#t=<seconds>`, or "" for an image."""
    _, seconds = split_address(address)
    return "" if seconds is None else f"#t={seconds:.3f}"
