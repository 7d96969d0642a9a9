"""Catalogues past one machine: embed a catalogue on Apache Beam into embedding shards, then
index or evaluate them without re-embedding.

    embed_catalogue(model, data, out)   the Beam job (`tfsim.catalogue.job`; needs the beam extra):
                                        RunInference with the export's own serving signature, bad
                                        files in a dead-letter output, Parquet shards + manifest,
                                        a rerun completes a killed job
    read_shards(out)                    the shards' rows in the catalogue's order (`EmbeddingShards`)
    index_shards(out, index)            the self-tuned index of the shards (as the index command builds)
    add_shards(index, out)              shards added to an index built by the same export
    evaluate_shards(out)                retrieval metrics of the shards (as the evaluate command computes)

The package sits above `training` (evaluation reuses `tfsim.training.assessment`) and below
`pipelines` (`python -m tfsim.pipelines.embed`; the index and evaluate commands' `--embeddings`).
"""

from tfsim.catalogue.shards import EmbeddingShards, read_shards

__all__ = ["EmbeddingShards", "read_shards", "embed_catalogue", "index_shards", "add_shards", "evaluate_shards"]


def __getattr__(name):
    # The Beam job imports apache_beam (seconds, and only with the beam extra): loaded when asked for.
    if name == "embed_catalogue":
        from tfsim.catalogue.job import embed_catalogue  # lazy: apache_beam is imported only for the job
        return embed_catalogue
    if name in ("index_shards", "add_shards", "evaluate_shards"):
        from tfsim.catalogue import use  # lazy: TensorFlow and ScaNN only when shards are used
        return getattr(use, name)
    raise AttributeError(f"module 'tfsim.catalogue' has no attribute {name!r}")
