"""Backbones and embedding heads."""

from tfsim.models.backbones import BACKBONES, get_backbone
from tfsim.models.embedding import build_embedding_model

__all__ = ["BACKBONES", "build_embedding_model", "get_backbone"]
