"""`transformers.models.siglip2.processing_siglip2`."""

from ...core.siglip2.processing import Siglip2Processor

__all__ = ["Siglip2Processor"]
