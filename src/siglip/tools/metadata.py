"""What a photo library knows about each row besides its vector: date taken, camera, GPS presence, size and
orientation, file size and dates, and whether it is a video frame; read once, when a row is embedded.

`SCHEMA` (field -> type) is the one list of fields: the index's records store them (`VectorStore`), the
`--where` language types its filters against them (`siglip.tools.search.filters`), `siglip embed` writes them
as Parquet columns, and search results show them. `read_metadata(address)` reads them from the file with
Pillow's EXIF reader (no other dependency); a field it cannot know is None.

Rules:
- `date`: EXIF DateTimeOriginal (the camera's local time), else the file's modification time in this
  machine's local time; `date_source` says which ('exif' or 'mtime'). ISO 8601 text, seconds precision.
- `width`, `height`: the image as shown, after the EXIF orientation (a rotated phone photo is portrait);
  `orientation`: 'landscape', 'portrait' or 'square' from them.
- `camera`: EXIF make and model joined (the make left out when the model already starts with it).
- `has_gps`: the EXIF GPS block holds a latitude.
- `media`, `frame_time`: 'video' and the frame's second for a frame address (`split_address`), else 'image'
  and None. A frame's width and height are None here (the video reader fills them); its file fields are
  the video file's.
- `screenshot` (a heuristic): the file name starts with "screenshot" or "screen shot" (how macOS, Windows,
  Android and GNOME name them), or the EXIF UserComment says "Screenshot" (iOS), or it is a PNG with no
  camera make or model whose sides have a screen's proportions (16:9, 16:10, 4:3, 3:2, or a phone's 18:9 to
  21:9, within 1%) and a short side of at least 480 px. Photos exported to PNG at those proportions are
  flagged too; screenshots cropped to other shapes are not.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

from PIL import Image, UnidentifiedImageError

from .inputs.media import split_address

# field -> type: 'text', 'int', 'float', 'bool' or 'date' (ISO 8601 text); `path` is the row's address
SCHEMA: dict[str, str] = {
    "path": "text",
    "date": "date",
    "date_source": "text",
    "year": "int",
    "camera_make": "text",
    "camera_model": "text",
    "camera": "text",
    "has_gps": "bool",
    "width": "int",
    "height": "int",
    "orientation": "text",
    "file_size": "int",
    "file_mtime": "date",
    "media": "text",
    "frame_time": "float",
    "screenshot": "bool",
}
STORED = tuple(name for name in SCHEMA if name != "path")  # what a record keeps beside its path

_ORIENTATION, _MAKE, _MODEL = 0x0112, 0x010F, 0x0110
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_DATE_ORIGINAL, _USER_COMMENT = 0x9003, 0x9286
_GPS_LATITUDE = 2
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that turn the image a quarter: width and height swap
_SCREEN_RATIOS = (16 / 9, 16 / 10, 4 / 3, 3 / 2)
_PHONE_RATIOS = (18 / 9, 21 / 9)  # tall phone screens: any ratio in this range
_SCREENSHOT_NAMES = ("screenshot", "screen shot")


def read_metadata(address: str) -> dict[str, Any]:
    """The `STORED` fields of the row at `address` (an image path or a video frame address). Fields that
    cannot be known are None; a file that cannot be stat-ed gives None file fields and the EXIF ones
    still None (never an error: metadata never stops a row from being embedded)."""
    path, frame_time = split_address(address)
    meta: dict[str, Any] = dict.fromkeys(STORED)
    meta["media"] = "image" if frame_time is None else "video"
    meta["frame_time"] = frame_time
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return meta
    mtime = dt.datetime.fromtimestamp(st.st_mtime).replace(microsecond=0)
    meta["file_size"], meta["file_mtime"] = st.st_size, mtime.isoformat()
    taken: dt.datetime | None = None
    user_comment = ""
    if frame_time is None:
        try:
            with Image.open(path) as image:
                exif = _header_exif(image)
                width, height = image.size
                image_format = image.format
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError):
            exif, width, height, image_format = None, None, None, None
        if exif is not None:
            if exif.get(_ORIENTATION) in _ROTATED:
                width, height = height, width
            meta["width"], meta["height"] = width, height
            meta["orientation"] = orientation(width, height)
            make, model = _text(exif.get(_MAKE)), _text(exif.get(_MODEL))
            meta["camera_make"], meta["camera_model"] = make, model
            meta["camera"] = camera_name(make, model)
            details = exif.get_ifd(_EXIF_IFD)
            taken = _exif_time(details.get(_DATE_ORIGINAL))
            user_comment = _text(details.get(_USER_COMMENT)) or ""
            meta["has_gps"] = _GPS_LATITUDE in exif.get_ifd(_GPS_IFD)
            meta["screenshot"] = is_screenshot(path, image_format, make or model, width, height, user_comment)
    date = taken or mtime
    meta["date"], meta["year"] = date.isoformat(), date.year
    meta["date_source"] = "exif" if taken else "mtime"
    return meta


def described(meta: dict[str, Any] | None) -> tuple[str, str]:
    """(date, camera) as results show them: the date to the minute, "~" before a file date (no EXIF date),
    "-" for what is not known (a row indexed before metadata was kept, a photo without a camera)."""
    if not meta:
        return "-", "-"
    date = meta.get("date") or ""
    shown = date[:16].replace("T", " ") if date else "-"
    if date and meta.get("date_source") == "mtime":
        shown = "~" + shown
    return shown, meta.get("camera") or "-"


def orientation(width: int, height: int) -> str:
    """'landscape', 'portrait' or 'square' for an image of this shown size."""
    return "square" if width == height else "landscape" if width > height else "portrait"


def camera_name(make: str | None, model: str | None) -> str | None:
    """Make and model as one name ("Apple iPhone 12"), without the make twice ("Canon Canon EOS R5")."""
    if not model:
        return make
    if not make or model.casefold().startswith(make.split()[0].casefold()):
        return model
    return f"{make} {model}"


def is_screenshot(
    path: str, image_format: str | None, camera: str | None, width: int, height: int, user_comment: str
) -> bool:
    """The screenshot heuristic of the module doc."""
    name = os.path.basename(path).casefold()
    if name.startswith(_SCREENSHOT_NAMES) or "screenshot" in user_comment.casefold():
        return True
    if image_format != "PNG" or camera or min(width, height) < 480:
        return False
    ratio = max(width, height) / min(width, height)
    near = any(abs(ratio / screen - 1) <= 0.01 for screen in _SCREEN_RATIOS)
    return near or _PHONE_RATIOS[0] * 0.99 <= ratio <= _PHONE_RATIOS[1] * 1.01


def _header_exif(image: Image.Image) -> Image.Exif:
    """The EXIF of an opened image without decoding its pixels: a PNG's `getexif` decodes the whole image to
    look for an eXIf chunk after the image data, so a PNG's is read from the chunks before it (where the
    PNG extensions put it, and where phones write it)."""
    if image.format != "PNG":
        return image.getexif()
    exif = Image.Exif()
    if image.info.get("exif"):
        exif.load(image.info["exif"])
    return exif


def _text(value: Any) -> str | None:
    """An EXIF text value cleaned (NULs, padding, a UserComment's 8-byte charset header), or None if empty."""
    if isinstance(value, bytes):
        if value[:8] in (b"ASCII\0\0\0", b"UNICODE\0", b"\0" * 8):
            value = value[8:].decode("utf-16" if value[:8] == b"UNICODE\0" else "latin-1", "replace")
        else:
            value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\0", "").strip()
    return value or None


def _exif_time(value: Any) -> dt.datetime | None:
    """An EXIF date-time ("2023:06:01 14:30:00"), or None when absent or malformed (all zeros, blanks)."""
    text = _text(value)
    if not text:
        return None
    try:
        return dt.datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
