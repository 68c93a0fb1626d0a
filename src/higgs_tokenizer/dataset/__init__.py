"""Tokenizing a corpus: items from a directory, manifest or Parquet files into Parquet shards.

    from higgs_tokenizer.dataset import tokenize_dataset
    manifest = tokenize_dataset("corpus/", "tokens/", tokenizer)

Needs pyarrow (the `[dataset]` extra). See `sources` (what an item is), `columns`
(the source columns passed through), `shards` (the output and how it is committed),
`job` (what both engines share), and the engines: `local` and `ray_engine`.
"""

from .local import tokenize_dataset
from .shards import OutputError
from .sources import Columns, SourceError, list_items

__all__ = ["Columns", "OutputError", "SourceError", "list_items", "tokenize_dataset"]
