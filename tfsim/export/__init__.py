"""Versioned SavedModel exports for TF Serving."""

from tfsim.export.saved_model import export_embedder, next_version, read_export

__all__ = ["export_embedder", "next_version", "read_export"]
