"""Optional dependencies: imported when a tool needs them, or an error naming the pip extra that brings them."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import MissingDependencyError


def require(module: str, extra: str, purpose: str) -> Any:
    """Import an optional dependency, or fail with the `pip install` line that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise MissingDependencyError(
            f"{purpose} needs the '{module}' package: pip install 'siglip[{extra}]'"
        ) from err
