"""`transformers.models.siglip.image_processing_pil_siglip`."""

from ...core.siglip.image_processing import SiglipImageProcessorPil

__all__ = ["SiglipImageProcessorPil"]
