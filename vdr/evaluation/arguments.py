"""evaluate_vdr.py's argument groups (the models' loading options are ``vdr.models.loading.ModelLoadingArguments``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from vdr.cli import RepeatableFlag
from vdr.data.sources import SourceArguments

#: Single-vector page storage precisions evaluate_vdr.py scores (vdr/quantization.py).
STORAGE_PRECISIONS = ("float32", "int8", "binary", "binary_rescored")
#: Where --benchmark takes each model's page budget from.
PIXEL_BUDGETS = ("leaderboard", "training")


@dataclass
class EvaluateArguments(SourceArguments):
    """What evaluate_vdr.py scores, and how."""

    model: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Model(s) to score (repeatable): a Sentence Transformers folder, a train_vdr.py output folder "
            "(its final model), a Hub id, or 'generated:tiny-qwen3-vl'.",
            "action": RepeatableFlag,
        },
    )
    dataset: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Dataset(s) to score on (repeatable): PATH or key=value pairs, e.g. "
            "'path=tomaarsen/llamaindex-vdr-en-train-preprocessed,config=eval,name=vdr-eval'. Keys: "
            "path, name, config, split, layout (rows: query, image, negative_*; beir: corpus / queries / qrels; "
            "or auto), query_column, positive_column, negative_columns (joined by +).",
            "action": RepeatableFlag,
        },
    )
    benchmark: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Leaderboard preset(s) to score on (repeatable): vidore-v1, vidore-v2, vidore-v3. Each expands to "
            "its public MTEB tasks, scored as the leaderboard scores them (the task's query instruction, the model "
            "family's pixel budget, MTEB's metrics per language), with a leaderboard table and MTEB result files. "
            "Combines with --dataset. Datasets come from the Hub, or from $VDR_BENCHMARK_ROOT/<dataset> when set.",
            "action": RepeatableFlag,
        },
    )
    tasks: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Keep only these tasks of the --benchmark presets (MTEB task names, e.g. Vidore3HrRetrieval).",
            "action": RepeatableFlag,
        },
    )
    languages: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Keep only these language subsets of the --benchmark tasks (e.g. english, fra-Latn).",
            "action": RepeatableFlag,
        },
    )
    pixel_budget: str = field(
        default="leaderboard",
        metadata={
            "help": "--benchmark page budget: 'leaderboard' (the model family's, as MTEB's model wrapper sets it) or "
            "'training' (the one the model was trained at: its saved processor). --min_pixels / --max_pixels "
            "override both. A warning names both budgets whenever a model is scored at another than its own."
        },
    )
    all_checkpoints: bool = field(
        default=False, metadata={"help": "For a training output folder, also score every checkpoint-* in it."}
    )
    truncate_dims: list[int] | None = field(
        default=None,
        metadata={"help": "Embedding dims to score. Default: the model's Matryoshka dims if known, else its full dim."},
    )
    batch_size: int = field(default=16, metadata={"help": "Encoding batch size."})
    output_dir: str = field(default="outputs/evaluation", metadata={"help": "Where results and plots are written."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Replace the results an earlier run left in --output_dir (without it, such a folder is refused)."
        },
    )
    no_cache: bool = field(default=False, metadata={"help": "Do not read or write the on-disk embedding cache."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Embedding cache folder. Default: $VDR_CACHE/embeddings."}
    )
    preprocess_cache_mb: int = field(
        default=4096,
        metadata={
            "help": "Memory budget (MB) for resized pages kept for the next model with the same processor settings; "
            "beyond it pages are resized again. 0 keeps none."
        },
    )
    # storage against quality (single_vector.py, quantization.py), late interaction (maxsim.py), text (bm25.py)
    precisions: list[str] = field(
        default_factory=lambda: list(STORAGE_PRECISIONS),
        metadata={
            "help": "Single-vector page storage precisions scored at every dim: float32, int8 (calibrated on the "
            "corpus), binary (Hamming distance), binary_rescored (Hamming, then the float query re-ranks the top hits)."
        },
    )
    rescore_multiplier: int = field(
        default=4, metadata={"help": "binary_rescored: re-rank this many times 10 Hamming hits per query."}
    )
    image_tokens_only: bool = field(
        default=False,
        metadata={"help": "Multi-vector models: index only a page's image-patch tokens (drops the template's text)."},
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.model:
            raise ValueError("give at least one --model")
        if not self.dataset and not self.benchmark:
            raise ValueError("give at least one --dataset or --benchmark")
        if self.pixel_budget not in PIXEL_BUDGETS:
            raise ValueError(f"--pixel_budget must be one of {', '.join(PIXEL_BUDGETS)}, got {self.pixel_budget!r}")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be 1 or more, got {self.batch_size}")
        if self.preprocess_cache_mb < 0:
            raise ValueError(f"--preprocess_cache_mb must be 0 or more, got {self.preprocess_cache_mb}")
        if self.truncate_dims is not None and any(dim < 1 for dim in self.truncate_dims):
            raise ValueError(f"--truncate_dims must be positive integers, got {self.truncate_dims}")
        if self.rescore_multiplier < 1:
            raise ValueError(f"--rescore_multiplier must be 1 or more, got {self.rescore_multiplier}")
        unknown = [precision for precision in self.precisions if precision not in STORAGE_PRECISIONS]
        if unknown:
            raise ValueError(f"--precisions {unknown} are not known; choose from {', '.join(STORAGE_PRECISIONS)}")


@dataclass
class RerankArguments:
    """Retrieve-then-rerank: rerankers applied to every embedding model's top pages."""

    reranker: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Reranker(s) (repeatable): a train_reranker_vdr.py output folder (its final model), a CrossEncoder "
            "folder, a Hub id such as Qwen/Qwen3-VL-Reranker-2B, or 'generated:tiny-qwen3-vl'. Each reranks every "
            "model's top --rerank_top_k pages, reported as 'model + reranker'. Loaded with the same dtype, "
            "attention and pixel options as the models.",
            "action": RepeatableFlag,
        },
    )
    rerank_top_k: int = field(default=10, metadata={"help": "How many of each query's top pages a reranker reorders."})
    rerank_batch_size: int = field(default=8, metadata={"help": "(query, page) pairs per reranker forward pass."})

    def __post_init__(self):
        if self.rerank_top_k < 1 or self.rerank_batch_size < 1:
            raise ValueError("rerank_top_k and rerank_batch_size must be 1 or more")
