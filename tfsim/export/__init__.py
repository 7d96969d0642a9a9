"""Versioned SavedModel exports for TF Serving (`saved_model`), and what is done with an export:
its identity (`identity`: fingerprint, the index it owns), embedding images with it (`embed`),
retrieval exports of its index (`retrieval`), indexing a catalogue of images (`catalogue`) and
searching it with an image (`search`).

Public (`__all__`, listed in `tfsim.PUBLIC_API`): exporting an embedder and reading an export
(`export_embedder`, `read_export`, `next_version`), embedding images with it (`embed_export`),
indexing a catalogue with it (`build_index`, `add_to_index`, `index_model`: the export that built
an index), the retrieval SavedModels of an index (`export_retrieval`; `STOCK_CONFIG` and
`SCANN_CONFIG`, the TF Serving model configs written beside them) and searching with an image
(`search_image` -> `SearchResult`, `render_grid`, `check_output`).
"""

from tfsim.export.catalogue import add_to_index, build_index
from tfsim.export.embed import embed_export
from tfsim.export.identity import index_model
from tfsim.export.retrieval import export_retrieval
from tfsim.export.saved_model import SCANN_CONFIG, STOCK_CONFIG, export_embedder, next_version, read_export
from tfsim.export.search import SearchResult, check_output, render_grid, search_image

__all__ = ["SCANN_CONFIG", "STOCK_CONFIG", "SearchResult", "add_to_index", "build_index", "check_output",
           "embed_export", "export_embedder", "export_retrieval", "index_model", "next_version", "read_export",
           "render_grid", "search_image"]
