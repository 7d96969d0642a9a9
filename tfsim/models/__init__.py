"""Backbones and embedding heads: `BACKBONES` (the registry of configurable backbones),
`get_backbone(name, ...)` and `build_embedding_model(...)` (a backbone with tfsim's embedding
head). Public (`__all__`, listed in `tfsim.PUBLIC_API`)."""

from tfsim.models.backbones import BACKBONES, get_backbone
from tfsim.models.embedding import build_embedding_model

__all__ = ["BACKBONES", "build_embedding_model", "get_backbone"]
