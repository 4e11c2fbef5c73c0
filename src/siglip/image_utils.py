"""transformers' public path of `load_image`: `from siglip.image_utils import load_image` (see
`siglip.core.image_utils`)."""

from .core.image_utils import load_image, load_images

__all__ = ["load_image", "load_images"]
