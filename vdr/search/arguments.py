"""search_vdr.py's argument groups, one per subcommand (the model's loading options are
``vdr.models.loading.ModelLoadingArguments``; the generated pages' size and seed are
``vdr.data.sources.SourceArguments``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vdr.cli import RepeatableFlag
from vdr.data.sources import SourceArguments


class OneValueRepeatableFlag(RepeatableFlag):
    """``--index a --index b``: one value per use, so a positional argument after the flag stays positional
    (``query --index a "the question"``)."""

    def __init__(self, option_strings, dest, nargs=None, **kwargs):
        super().__init__(option_strings, dest, nargs=None, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        super().__call__(parser, namespace, [values], option_string)


#: How page vectors are stored (``vdr.evaluation.quantization``'s precisions; binary_rescored is binary storage
#: searched with float rescoring, a query-time choice: ``--rescore_multiplier``).
INDEX_PRECISIONS = ("float32", "int8", "binary")
#: LanceDB's ANN indexes offered at index time ("none": exact scan; new rows are scanned exactly either way).
ANN_INDEXES = ("none", "ivf_flat", "ivf_pq", "ivf_hnsw_sq")


@dataclass
class IndexArguments(SourceArguments):
    """What ``search_vdr.py index`` embeds, with which model, and how the vectors are stored."""

    index: str = field(
        default="",
        metadata={
            "help": "The index: a local folder (created), or a LanceDB URI such as s3://bucket/indexes/finetuned "
            "(then also give --pages_dir)."
        },
    )
    model: str = field(
        default="",
        metadata={
            "help": "The embedding model: a Sentence Transformers folder, a train_vdr.py output folder (its final "
            "model), a Hub id, or 'generated:tiny-qwen3-vl'."
        },
    )
    input_dir: str | None = field(
        default=None,
        metadata={"help": "A folder of PDFs and page images, rendered as prepare_vdr_data.py renders them."},
    )
    pages: str | None = field(
        default=None,
        metadata={"help": "A prepare_vdr_data.py output folder (or its pages.jsonl): index the pages it rendered."},
    )
    dataset: str | None = field(
        default=None,
        metadata={
            "help": "A dataset whose corpus to index, as evaluate_vdr.py's --dataset (e.g. generated:pages or "
            "path=vidore/esg_reports_v2,layout=beir)."
        },
    )
    pages_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where page images that have no file yet are written (rendered PDFs, a dataset's pages). "
            "Default: <index>/page-files for a local index."
        },
    )
    dim: int | None = field(
        default=None, metadata={"help": "Matryoshka dim kept (default: the model's full embedding dimension)."}
    )
    precision: str = field(
        default="float32",
        metadata={"help": "Page vector storage: float32, int8 (calibrated on the first pages) or binary (1 bit/dim)."},
    )
    calibration_pages: int = field(
        default=1024,
        metadata={"help": "int8: the first indexing run calibrates each dim's range on this many pages."},
    )
    ann_index: str = field(
        default="none",
        metadata={
            "help": "Build a LanceDB ANN index after indexing: none (exact scan), ivf_flat, ivf_pq or ivf_hnsw_sq "
            "(float32; binary gets ivf_flat with Hamming distance). Worth it from about 100k pages (docs/search.md)."
        },
    )
    batch_size: int = field(default=8, metadata={"help": "Encoding batch size."})
    write_every: int = field(
        default=64, metadata={"help": "Pages encoded between writes: an interrupted run loses at most these."}
    )
    num_workers: int = field(default=2, metadata={"help": "PDF rendering processes (--input_dir)."})
    overwrite: bool = field(
        default=False,
        metadata={"help": "Replace an index built with another model, dim or precision (without it: refused)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.index:
            raise ValueError("give --index (a folder or a LanceDB URI to write the index to)")
        if not self.model:
            raise ValueError("give --model (the embedding model that encodes the pages)")
        sources = [name for name in ("input_dir", "pages", "dataset") if getattr(self, name)]
        if len(sources) != 1:
            raise ValueError(f"give exactly one of --input_dir, --pages or --dataset (got {len(sources)})")
        if self.precision not in INDEX_PRECISIONS:
            raise ValueError(f"--precision {self.precision!r} is not known; choose from {', '.join(INDEX_PRECISIONS)}")
        if self.ann_index not in ANN_INDEXES:
            raise ValueError(f"--ann_index {self.ann_index!r} is not known; choose from {', '.join(ANN_INDEXES)}")
        for name in ("batch_size", "write_every", "calibration_pages", "num_workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be 1 or more, got {getattr(self, name)}")
        if self.dim is not None and self.dim < 1:
            raise ValueError(f"--dim must be 1 or more, got {self.dim}")


@dataclass
class QueryArguments:
    """``search_vdr.py query``: the index, the query, how many pages, and an optional second stage."""

    index: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Index(es) to search (repeatable): what search_vdr.py index wrote.",
            "action": OneValueRepeatableFlag,
        },
    )
    text: str | None = field(default=None, metadata={"help": "The query (also accepted as the positional argument)."})
    top_k: int = field(default=10, metadata={"help": "How many pages to return."})
    json: bool = field(default=False, metadata={"help": "Print the results as JSON (for scripts)."})
    rescore_multiplier: int = field(
        default=4,
        metadata={"help": "binary indexes: rescore this many times max(top_k, 10) Hamming hits with the float query."},
    )
    nprobes: int = field(default=20, metadata={"help": "ANN indexes: IVF partitions searched per query."})
    refine_factor: int = field(
        default=4, metadata={"help": "ANN indexes (ivf_pq, ivf_hnsw_sq): re-rank this many times top_k exactly."}
    )
    reranker: str | None = field(
        default=None,
        metadata={
            "help": "A reranker (train_reranker_vdr.py output, CrossEncoder folder or Hub id) that reorders the top_k."
        },
    )
    rerank_batch_size: int = field(default=8, metadata={"help": "(query, page) pairs per reranker forward pass."})

    def __post_init__(self):
        if not self.index:
            raise ValueError("give at least one --index")
        for name in ("top_k", "nprobes", "refine_factor", "rerank_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be 1 or more, got {getattr(self, name)}")
        if self.rescore_multiplier < 0:
            raise ValueError(f"--rescore_multiplier must be 0 (no rescoring) or more, got {self.rescore_multiplier}")


@dataclass
class ServeArguments(QueryArguments):
    """``search_vdr.py serve``: the query options, and where the web page listens."""

    host: str = field(default="127.0.0.1", metadata={"help": "Address to bind. The default serves this machine only."})
    port: int = field(default=7860, metadata={"help": "Port of the web page (0: any free port)."})
