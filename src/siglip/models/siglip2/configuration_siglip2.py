"""`transformers.models.siglip2.configuration_siglip2`."""

from ...core.siglip2.configuration import Siglip2Config, Siglip2TextConfig, Siglip2VisionConfig

__all__ = ["Siglip2Config", "Siglip2TextConfig", "Siglip2VisionConfig"]
