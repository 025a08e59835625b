"""A search index: one LanceDB table of pages (id, document, page, page file, content hash, vector), with the model,
its loading settings, the Matryoshka dim and the storage precision recorded in the table's schema metadata, so the
index says how it was built wherever it is opened (a local folder or object storage: LanceDB opens both).

Precisions follow ``vdr.evaluation.quantization`` (what evaluate_vdr.py's storage table measures), so a query ranks
pages as the evaluation scored them:

- ``float32``: unit vectors searched by dot product (= cosine), exactly or through an ANN index;
- ``binary``: packed sign bits searched by Hamming distance (LanceDB's binary vectors), then the best
  ``rescore_multiplier x max(k, 10)`` re-ranked by the float query against their bits;
- ``int8``: int8 codes, each dim's range calibrated on the first indexing run's pages, scored by integer dot product.
  LanceDB 0.40 searches float and binary vectors only (it refuses a query against an int8 column), so int8 pages
  are scanned exactly by NumPy: 1 byte per dim on disk, a full scan per query.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from sentence_transformers.util.quantization import quantize_embeddings

from vdr.errors import VdrError
from vdr.evaluation.quantization import RESCORE_TOP_K, unpack_bits

TABLE_NAME = "pages"
#: The schema metadata key holding the index settings (JSON).
SETTINGS_KEY = b"vdr_search"
#: Bump when the table layout changes: an older index is then refused with a clear message.
INDEX_FORMAT = 1
METADATA_COLUMNS = ("id", "document", "page", "page_file", "content_hash")


@dataclass
class IndexSettings:
    """How an index was built: recorded once, when its table is created."""

    model: str  # what loads it again (a resolved local path, a Hub id or generated:tiny-qwen3-vl)
    model_fingerprint: str
    loading: dict[str, Any]
    dim: int
    full_dim: int
    precision: str
    calibration: list[list[float]] | None = None  # int8: each dim's [min, max] over the calibration pages
    format: int = INDEX_FORMAT

    def as_json(self) -> bytes:
        return json.dumps(vars(self), sort_keys=True).encode()


def page_vectors(embeddings: torch.Tensor, settings: IndexSettings) -> np.ndarray:
    """Full-dimension page embeddings as the index stores them: truncated to the dim, re-normalised (the models
    score by cosine), then quantized to the precision."""
    vectors = unit_vectors(embeddings, settings.dim)
    if settings.precision == "float32":
        return vectors
    if settings.precision == "int8":
        return quantize_embeddings(vectors, "int8", ranges=np.asarray(settings.calibration, dtype=np.float32).T)
    return quantize_embeddings(vectors, "ubinary")


def unit_vectors(embeddings: torch.Tensor, dim: int) -> np.ndarray:
    return torch.nn.functional.normalize(embeddings[:, :dim].float(), dim=1).numpy()


def int8_calibration(embeddings: torch.Tensor, dim: int) -> list[list[float]]:
    """Each dim's [min, max] over these pages (what evaluate_vdr.py calibrates on: the corpus)."""
    vectors = unit_vectors(embeddings, dim)
    return np.stack([vectors.min(axis=0), vectors.max(axis=0)], axis=1).tolist()


def table_schema(settings: IndexSettings) -> pa.Schema:
    width = (settings.dim + 7) // 8 if settings.precision == "binary" else settings.dim
    value_type = {"float32": pa.float32(), "int8": pa.int8(), "binary": pa.uint8()}[settings.precision]
    fields = [
        pa.field("id", pa.string()),
        pa.field("document", pa.string()),
        pa.field("page", pa.int32()),
        pa.field("page_file", pa.string()),
        pa.field("content_hash", pa.string()),
        pa.field("vector", pa.list_(value_type, width)),
    ]
    return pa.schema(fields, metadata={SETTINGS_KEY: settings.as_json()})


def rows_table(pages: list, vectors: np.ndarray, schema: pa.Schema) -> pa.Table:
    """Pages (``vdr.search.pages.IndexPage``) and their stored vectors as rows of the index's table."""
    width = schema.field("vector").type.list_size
    flat = pa.array(vectors.reshape(-1), type=schema.field("vector").type.value_type)
    columns = {name: [getattr(page, name) for page in pages] for name in METADATA_COLUMNS}
    return pa.table({**columns, "vector": pa.FixedSizeListArray.from_arrays(flat, width)}, schema=schema)


def damaged(uri: str, error: Exception) -> VdrError:
    return VdrError(
        f"The index at '{uri}' is damaged and cannot be read ({type(error).__name__}: {str(error)[:300]}). Build it "
        "again: rerun the same `search_vdr.py index` command with --overwrite true."
    )


class PageIndex:
    """An opened index: its table, its settings, and search."""

    def __init__(self, uri: str, table: Any, settings: IndexSettings):
        self.uri = uri
        self.table = table
        self.settings = settings
        self._scan: tuple[int, np.ndarray, pa.Table] | None = None  # int8: (table version, codes, metadata)

    # Opening ---------------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, uri: str, must_exist: bool = True) -> PageIndex | None:
        """The index at ``uri``; None when there is none yet and ``must_exist`` is false. A table that cannot be
        read, or was not written by search_vdr.py, is an error naming the index and what to do."""
        import lancedb

        try:
            database = lancedb.connect(uri)
            if TABLE_NAME not in database.list_tables().tables:
                if must_exist:
                    raise VdrError(
                        f"There is no index at '{uri}'. Build one with `python search_vdr.py index --index {uri} "
                        "--model ... --input_dir ...` (or --pages / --dataset)."
                    )
                return None
            table = database.open_table(TABLE_NAME)
            metadata = table.schema.metadata or {}
            table.count_rows()  # reads the manifest and the fragments' row counts
        except VdrError:
            raise
        except Exception as error:  # lance reports a damaged table as OSError, RuntimeError, ValueError...
            raise damaged(uri, error) from None
        if SETTINGS_KEY not in metadata:
            raise VdrError(
                f"The table '{TABLE_NAME}' at '{uri}' was not written by search_vdr.py (it records no index "
                "settings). Point --index at an index folder, or build one there with --overwrite true."
            )
        settings = IndexSettings(**json.loads(metadata[SETTINGS_KEY]))
        if settings.format != INDEX_FORMAT:
            raise VdrError(f"The index at '{uri}' has format {settings.format}; rebuild it with --overwrite true.")
        return cls(uri, table, settings)

    @classmethod
    def create(cls, uri: str, settings: IndexSettings, first_rows: pa.Table) -> PageIndex:
        import lancedb

        database = lancedb.connect(uri)
        table = database.create_table(TABLE_NAME, data=first_rows, schema=first_rows.schema, exist_ok=False)
        return cls(uri, table, settings)

    # Reading ---------------------------------------------------------------------------------------------------

    def stored_pages(self) -> dict[str, str]:
        """Page id -> content hash of every stored page."""
        try:
            rows = self.table.search().select(["id", "content_hash"]).limit(None).to_arrow()
        except Exception as error:
            raise damaged(self.uri, error) from None
        return dict(zip(rows["id"].to_pylist(), rows["content_hash"].to_pylist()))

    def page_files(self) -> list[str]:
        rows = self.table.search().select(["page_file"]).limit(None).to_arrow()
        return rows["page_file"].to_pylist()

    def __len__(self) -> int:
        return self.table.count_rows()

    # Writing ---------------------------------------------------------------------------------------------------

    def add(self, rows: pa.Table) -> None:
        self.table.add(rows)

    def delete(self, ids: list[str]) -> None:
        for start in range(0, len(ids), 500):
            quoted = ", ".join("'" + page_id.replace("'", "''") + "'" for page_id in ids[start : start + 500])
            self.table.delete(f"id IN ({quoted})")

    # Searching -------------------------------------------------------------------------------------------------

    def search(
        self, query_embedding: torch.Tensor, top_k: int, rescore_multiplier: int = 4, nprobes: int = 20, refine: int = 4
    ) -> list[dict[str, Any]]:
        """The ``top_k`` pages for one full-dimension query embedding, best first: id, document, page, page_file
        and score (higher is better: cosine for float32, rescored dot or minus the Hamming distance for binary,
        integer dot product for int8)."""
        query = unit_vectors(query_embedding.reshape(1, -1), self.settings.dim)[0]
        try:
            if self.settings.precision == "int8":
                return self._search_int8(query, top_k)
            if self.settings.precision == "binary":
                return self._search_binary(query, top_k, rescore_multiplier, nprobes)
            hits = self._vector_search(query, "dot", top_k, nprobes, refine)
        except VdrError:
            raise
        except Exception as error:
            raise damaged(self.uri, error) from None
        return _results(hits, 1.0 - np.asarray(hits["_distance"].to_pylist()))  # LanceDB's dot distance: 1 - dot

    def _vector_search(self, query: np.ndarray, metric: str, limit: int, nprobes: int, refine: int) -> pa.Table:
        search = self.table.search(query, vector_column_name="vector").distance_type(metric).limit(limit)
        search = search.select([*METADATA_COLUMNS, "_distance"] + (["vector"] if metric == "hamming" else []))
        if self.table.list_indices():
            search = search.nprobes(nprobes)
            if metric != "hamming":
                search = search.refine_factor(refine)
        return search.to_arrow()

    def _search_binary(self, query: np.ndarray, top_k: int, multiplier: int, nprobes: int) -> list[dict[str, Any]]:
        candidates = multiplier * max(top_k, RESCORE_TOP_K) if multiplier else top_k
        bits = quantize_embeddings(query.reshape(1, -1), "ubinary")[0]
        hits = self._vector_search(bits, "hamming", candidates, nprobes, 1)
        if not multiplier or not len(hits):
            return _results(hits, -np.asarray(hits["_distance"].to_pylist(), dtype=np.float64))
        page_bits = np.stack(hits["vector"].to_numpy(zero_copy_only=False)).astype(np.uint8)
        # float query . page bits, as Sentence Transformers (and evaluate_vdr.py's binary_rescored) rescore
        rescored = unpack_bits(page_bits, self.settings.dim).numpy() @ query
        order = np.argsort(-rescored, kind="stable")[:top_k]
        return _results(hits.take(order), rescored[order])

    def _search_int8(self, query: np.ndarray, top_k: int) -> list[dict[str, Any]]:
        version = self.table.version
        if self._scan is None or self._scan[0] != version:
            rows = self.table.search().select([*METADATA_COLUMNS, "vector"]).limit(None).to_arrow()
            codes = np.stack(rows["vector"].to_numpy(zero_copy_only=False)).astype(np.int64) if len(rows) else None
            self._scan = (version, codes, rows.drop_columns(["vector"]))
        _, codes, rows = self._scan
        if codes is None:
            return []
        ranges = np.asarray(self.settings.calibration, dtype=np.float32).T
        query_codes = quantize_embeddings(query.reshape(1, -1), "int8", ranges=ranges)[0].astype(np.int64)
        scores = codes @ query_codes
        top = np.argsort(-scores, kind="stable")[:top_k]
        return _results(rows.take(top), scores[top].astype(np.float64))


def _results(hits: pa.Table, scores: np.ndarray) -> list[dict[str, Any]]:
    columns = {name: hits[name].to_pylist() for name in METADATA_COLUMNS}
    return [
        {**{name: columns[name][i] for name in METADATA_COLUMNS}, "score": float(scores[i])} for i in range(len(hits))
    ]


def create_ann_index(index: PageIndex, kind: str) -> None:
    """A LanceDB ANN index over the vectors (``kind``: ivf_flat, ivf_pq or ivf_hnsw_sq; binary vectors take ivf_flat
    with Hamming distance, the one LanceDB index type for them). Rows added later are searched exactly until the
    next ``optimize`` folds them in."""
    from lancedb.index import HnswSq, IvfFlat, IvfPq

    precision = index.settings.precision
    if precision == "int8" or (precision == "binary" and kind != "ivf_flat"):
        raise VdrError(
            f"--ann_index {kind} does not apply to {precision} vectors: LanceDB indexes binary vectors with ivf_flat "
            "(Hamming distance) only, and int8 vectors are scanned exactly. Use --ann_index none or ivf_flat."
        )
    if precision == "binary":
        config = IvfFlat(distance_type="hamming")
    else:
        config = {"ivf_flat": IvfFlat, "ivf_pq": IvfPq, "ivf_hnsw_sq": HnswSq}[kind](distance_type="dot")
    index.table.create_index("vector", config=config, replace=True)
