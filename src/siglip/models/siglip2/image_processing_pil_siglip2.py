"""`transformers.models.siglip2.image_processing_pil_siglip2`."""

from ...core.siglip2.image_processing import Siglip2ImageProcessorPil

__all__ = ["Siglip2ImageProcessorPil"]
