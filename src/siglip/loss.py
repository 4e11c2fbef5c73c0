"""Old path of the sigmoid loss, kept so that code written for it still runs: it lives in `siglip.core.loss`."""

from __future__ import annotations

from .core.loss import siglip_loss, sigmoid_loss

__all__ = ["siglip_loss", "sigmoid_loss"]
