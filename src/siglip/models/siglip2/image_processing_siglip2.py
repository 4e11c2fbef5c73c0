"""`transformers.models.siglip2.image_processing_siglip2`."""

from ...core.siglip2.image_processing import Siglip2ImageProcessor, get_image_size_for_max_num_patches

__all__ = ["Siglip2ImageProcessor", "get_image_size_for_max_num_patches"]
