"""`transformers.models.siglip.configuration_siglip`."""

from ...core.siglip.configuration import SiglipConfig, SiglipTextConfig, SiglipVisionConfig

__all__ = ["SiglipConfig", "SiglipTextConfig", "SiglipVisionConfig"]
