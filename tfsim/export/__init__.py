"""Versioned SavedModel exports for TF Serving (`saved_model`), and what is done with an export:
its identity (`identity`: fingerprint, the index it owns), embedding images with it (`embed`),
retrieval exports of its index (`retrieval`), indexing a catalogue of images (`catalogue`) and
searching it with an image (`search`)."""

from tfsim.export.saved_model import export_embedder, next_version, read_export

__all__ = ["export_embedder", "next_version", "read_export"]
