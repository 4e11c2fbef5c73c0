"""`transformers.models.siglip.processing_siglip`."""

from ...core.siglip.processing import SiglipProcessor

__all__ = ["SiglipProcessor"]
