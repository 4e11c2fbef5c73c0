"""`transformers.models.siglip.tokenization_siglip`."""

from ...core.two_tower.sentencepiece import SiglipTokenizer

__all__ = ["SiglipTokenizer"]
