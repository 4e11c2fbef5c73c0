"""`transformers.models.siglip.image_processing_siglip`."""

from ...core.siglip.image_processing import SiglipImageProcessor

__all__ = ["SiglipImageProcessor"]
