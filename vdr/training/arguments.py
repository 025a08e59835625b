"""The training scripts' argument groups (beside Sentence Transformers' own training arguments, used as they are),
and the checks that span groups, run before anything loads."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sentence_transformers import MultiVectorEncoder, SentenceTransformerTrainingArguments
from sentence_transformers.multi_vector_encoder import MultiVectorEncoderTrainingArguments

from vdr.data.retrieval_sets import is_beir_folder
from vdr.data.sources import SourceArguments, check_image_root
from vdr.errors import VdrError
from vdr.models.loading import ModelLoadingArguments
from vdr.models.multi_vector import projection_learning_rates

DEFAULT_MATRYOSHKA_DIMS = [2048, 1536, 1024, 512, 256, 128, 64]


@dataclass
class ModelArguments(ModelLoadingArguments):
    """Which embedding model to finetune (and the loading options above)."""

    model_name_or_path: str = field(
        default="Qwen/Qwen3-VL-Embedding-2B",
        metadata={
            "help": "Hub id or local folder: a Sentence Transformers model (loaded as it is) or a bare "
            "vision-language model (given last-token pooling and normalisation). "
            "'generated:tiny-qwen3-vl' builds a tiny random Qwen3-VL offline."
        },
    )
    truncate_dim: int | None = field(
        default=None,
        metadata={"help": "Default embedding dimension stored in the saved model (e.g. 1024). Default: full."},
    )


@dataclass
class MultiVectorModelArguments(ModelLoadingArguments):
    """Which base model to finetune as a multi-vector (late-interaction) model (and the loading options above)."""

    model_name_or_path: str = field(
        default="Qwen/Qwen3-VL-Embedding-2B",
        metadata={
            "help": "Hub id or local folder: an embedding model or a bare vision-language model (Sentence "
            "Transformers' MultiVectorEncoder adds a 128-d token projection), or a saved multi-vector model. "
            "'generated:tiny-qwen3-vl' builds a tiny random Qwen3-VL offline."
        },
    )
    projection_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Learning rate of the new, randomly initialised token projection (the library's example: 2e-4, "
            "10x the backbone's). Default: the same as learning_rate."
        },
    )


@dataclass
class DataArguments(SourceArguments):
    """Where the (query, page image, hard negatives) rows come from."""

    train_dataset: str = field(
        default="tomaarsen/llamaindex-vdr-en-train-preprocessed",
        metadata={
            "help": "Hub dataset id, a datasets.save_to_disk folder, or parquet / JSON-lines file(s) (glob ok) "
            "whose image columns hold file paths. 'generated:pages' generates document pages offline."
        },
    )
    train_dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    train_split: str = field(default="train", metadata={"help": "Split of the training source."})
    eval_dataset: str | None = field(
        default=None, metadata={"help": "Evaluation source (same kinds as train_dataset). Default: none."}
    )
    eval_dataset_config: str | None = field(default=None, metadata={"help": "Hub config of the eval source."})
    eval_split: str = field(default="train", metadata={"help": "Split of the evaluation source."})
    eval_split_size: float = field(
        default=0.0,
        metadata={
            "help": "Without eval_dataset: hold this many rows (>= 1) or this fraction (< 1) of the training "
            "source out for evaluation."
        },
    )
    query_column: str = field(default="query", metadata={"help": "Column with the text queries."})
    positive_column: str = field(default="image", metadata={"help": "Column with the page that answers the query."})
    negative_columns: list[str] = field(
        default_factory=lambda: ["negative_0"],
        metadata={"help": "Hard-negative page columns used in training (any number, may be empty)."},
    )
    eval_negative_columns: list[str] | None = field(
        default=None,
        metadata={
            "help": "Hard-negative columns added to the evaluation corpus. Default: every column whose name "
            "starts with 'negative'."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation rows."})
    presize_pages: bool = field(
        default=True,
        metadata={
            "help": "Resize training pages once to the model's pixel budget and cache them on disk "
            "($VDR_CACHE/train-pages); the model sees bit-identical pixels at a fraction of the CPU cost."
        },
    )

    def __post_init__(self):
        if self.eval_split_size < 0:
            raise ValueError(f"eval_split_size must be 0 or more, got {self.eval_split_size}.")
        if self.eval_split_size > 1 and not float(self.eval_split_size).is_integer():
            raise ValueError(f"eval_split_size is a row count (>= 1) or a fraction (< 1), got {self.eval_split_size}.")
        if self.eval_dataset and self.eval_split_size:
            raise ValueError("Set either eval_dataset or eval_split_size (to carve one from the training data).")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be 1 or more, got {getattr(self, name)}.")
        columns = [self.query_column, self.positive_column, *self.negative_columns]
        repeated = sorted({column for column in columns if columns.count(column) > 1})
        if repeated:  # a page column used twice would pair a page with itself (or fail inside pyarrow)
            raise ValueError(
                f"the query, positive and negative columns must differ; {', '.join(repeated)} is given more than once."
            )
        super().__post_init__()


@dataclass
class CachedLossArguments:
    """CachedMultipleNegativesRankingLoss (and its multi-vector counterpart): in-batch negatives, gradient-cached."""

    mini_batch_size: int = field(
        default=1,
        metadata={"help": "Gradient-cache mini-batch: memory grows with it, the result does not change."},
    )
    gather_across_devices: bool = field(
        default=False,
        metadata={"help": "Multi-GPU: use the other devices' embeddings as extra in-batch negatives."},
    )

    def __post_init__(self):
        if self.mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be 1 or more, got {self.mini_batch_size}.")


@dataclass
class LossArguments(CachedLossArguments):
    """MatryoshkaLoss over CachedMultipleNegativesRankingLoss."""

    matryoshka_dims: list[int] = field(
        default_factory=lambda: list(DEFAULT_MATRYOSHKA_DIMS),
        metadata={"help": "Embedding dimensions trained (and evaluated) by MatryoshkaLoss, largest first."},
    )

    def __post_init__(self):
        if not self.matryoshka_dims or any(dim < 1 for dim in self.matryoshka_dims):
            raise ValueError(f"matryoshka_dims must be positive integers, got {self.matryoshka_dims}.")
        if self.matryoshka_dims != sorted(self.matryoshka_dims, reverse=True):
            raise ValueError(f"matryoshka_dims must be listed largest first, got {self.matryoshka_dims}.")
        super().__post_init__()


@dataclass
class EvaluationArguments:
    """The retrieval evaluation run before, during and after training."""

    eval_name: str = field(default="vdr-eval", metadata={"help": "Name of the evaluator (prefixes the metrics)."})
    evaluator_batch_size: int = field(default=16, metadata={"help": "Encoding batch size of the retrieval evaluator."})
    evaluate_base_model: bool = field(default=True, metadata={"help": "Score the model before training."})

    def __post_init__(self):
        if self.evaluator_batch_size < 1:
            raise ValueError(f"evaluator_batch_size must be 1 or more, got {self.evaluator_batch_size}.")


# PEFT has no default target modules for Qwen3-VL. Language model: attention and MLP projections. Vision tower
# (opt-in): attention and MLP of each block; the merger that projects into the language model is left alone.
LANGUAGE_MODEL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VISION_TARGETS = ["attn.qkv", "attn.proj", "mlp.linear_fc1", "mlp.linear_fc2"]


@dataclass
class LoraArguments:
    """LoRA adapters instead of full finetuning (``--lora true``)."""

    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters on a frozen model (needs peft)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank: the adapters' size and capacity."})
    lora_alpha: float = field(default=32, metadata={"help": "LoRA scaling numerator: updates are scaled by alpha / r."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the adapters' input during training."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: list(LANGUAGE_MODEL_TARGETS),
        metadata={"help": "Module name suffixes that get adapters. Default: the language model's projections."},
    )
    lora_vision: bool = field(
        default=False,
        metadata={
            "help": "Also adapt the vision tower (attn.qkv, attn.proj, mlp.linear_fc1/2). Serving engines (vLLM) may "
            "apply a Qwen3-VL LoRA to the language model only: use it with the merged final model."
        },
    )
    lora_merge: bool = field(
        default=True,
        metadata={
            "help": "Save the final model with the adapter merged into the weights (standalone). false: save the "
            "adapter only (loading it needs the base model)."
        },
    )

    def __post_init__(self):
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be 1 or more, got {self.lora_r}.")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be positive, got {self.lora_alpha}.")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        if self.lora and not self.lora_target_modules and not self.lora_vision:
            raise ValueError("lora_target_modules is empty and lora_vision is false: no module would get an adapter.")

    def target_modules(self) -> list[str]:
        vision = [name for name in VISION_TARGETS if name not in self.lora_target_modules] if self.lora_vision else []
        return [*self.lora_target_modules, *vision]


LOSSES = ("bce", "lambda", "cmnrl")


@dataclass
class RerankerLossArguments:
    """The cross-encoder loss, and the shape of the training rows it reads."""

    loss: str = field(
        default="bce",
        metadata={
            "help": "bce: BinaryCrossEntropyLoss on (query, page, 1/0) pairs; lambda: LambdaLoss on (query, [positive, "
            "negatives], labels) lists; cmnrl: CachedMultipleNegativesRankingLoss on (query, positive, negatives...) "
            "n-tuples, plus in-batch negatives."
        },
    )
    mini_batch_size: int = field(
        default=8, metadata={"help": "lambda / cmnrl: pairs per forward pass (memory grows with it, not the result)."}
    )
    num_in_batch_negatives: int = field(
        default=4, metadata={"help": "cmnrl: other rows' pages scored as extra negatives for each query (1 or more)."}
    )
    pos_weight: float | None = field(
        default=None,
        metadata={
            "help": "bce: weight of the positive pairs. Default: the number of negative columns, so that positives "
            "and negatives weigh the same in total."
        },
    )

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}.")
        if self.mini_batch_size < 1 or self.num_in_batch_negatives < 1:
            # With 0, Sentence Transformers' in-batch sampling fails mid-training ("cannot sample n_sample <= 0")
            raise ValueError("mini_batch_size and num_in_batch_negatives must be 1 or more.")


def check_training_run(model: ModelArguments, data: DataArguments, loss: LossArguments, training: Any) -> None:
    """An embedding run's checks that span argument groups, run before anything loads (a mistake must not cost a
    model load): the checks every training script shares, then the saved model's default dimension."""
    check_run_arguments(data, training)
    if model.truncate_dim is not None and model.truncate_dim not in loss.matryoshka_dims:
        raise VdrError(
            f"--truncate_dim {model.truncate_dim} is not one of the trained matryoshka_dims {loss.matryoshka_dims}: "
            "the saved model would default to a dimension it was not trained at. Pick one of those dims."
        )


def check_run_arguments(data: DataArguments, training: Any) -> None:
    """Checks every training script (embedder, multi-vector, reranker) runs before anything loads: the numbers of the
    training arguments, the data sources and folders, evaluation data for an evaluation strategy, the Hub push and
    the reporting integrations."""
    check_training_numbers(training)
    check_data_folders(data, training.output_dir)
    eval_strategy = getattr(training.eval_strategy, "value", training.eval_strategy)
    if eval_strategy != "no" and not (data.eval_dataset or data.eval_split_size):
        raise VdrError(
            f"--eval_strategy {eval_strategy} evaluates during training, but there is no evaluation "
            "data: set --eval_dataset, or --eval_split_size to hold rows out, or --eval_strategy no."
        )
    check_push(training)
    check_reporting(training)


def check_training_numbers(training: Any) -> None:
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(training, name) < 1:
            raise VdrError(f"--{name} must be 1 or more, got {getattr(training, name)}.")
    if training.learning_rate < 0:
        raise VdrError(f"--learning_rate must be 0 or more, got {training.learning_rate} (the recipe's is 2e-5).")
    if training.max_steps <= 0 and training.num_train_epochs <= 0:  # the run would save its base model as trained
        raise VdrError(
            f"--num_train_epochs {training.num_train_epochs} trains nothing: give a number of epochs above 0 (the "
            "recipe's is 1), or --max_steps."
        )


def check_push(training: Any) -> None:
    """A push needs a valid repository name; a bad one would fail only after the whole run."""
    if not training.push_to_hub:
        return
    repo_id = training.hub_model_id or training.run_name
    if not repo_id:
        raise VdrError("--push_to_hub true needs a repository name: set --hub_model_id you/your-model.")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        flag = "--hub_model_id" if training.hub_model_id else "--run_name (the repository name without --hub_model_id)"
        raise VdrError(f"{flag} '{repo_id}' is not a valid Hub repository name: {error}") from None


def check_reporting(training: Any) -> None:
    """Every ``--report_to`` integration must be installed; transformers would fail only once the model loaded."""
    from transformers.integrations import get_available_reporting_integrations

    requested = [name for name in training.report_to or [] if name not in ("none", "all")]
    missing = [name for name in requested if name not in get_available_reporting_integrations()]
    if missing:
        raise VdrError(
            f"--report_to {' '.join(missing)}: {', '.join(missing)} is not installed. Install it (pip install "
            f"{' '.join(missing)}) or drop it from --report_to (none turns reporting off)."
        )


def check_reranker_run(data: DataArguments, loss: RerankerLossArguments, training: Any) -> None:
    """Checks run before anything loads: the training checks shared with train_vdr.py, and the loss's columns."""
    check_run_arguments(data, training)
    if loss.loss in ("bce", "lambda") and not data.negative_columns:
        raise VdrError(
            f"--loss {loss.loss} learns from hard negatives, but --negative_columns is empty. Give at least one "
            "negative column, or use --loss cmnrl (in-batch negatives)."
        )


def check_data_folders(data: DataArguments, output_dir: str) -> None:
    """The training and evaluation sources must be rows, and the run must not write into their folders: a BEIR-layout
    folder (corpus / queries / qrels) is an evaluation set for evaluate_vdr.py, and checkpoints, final/ and
    metrics.json written among a dataset's files would be hard to tell apart from them."""
    check_image_root(data)
    same_source = (data.train_dataset, data.train_dataset_config, data.train_split) == (
        data.eval_dataset,
        data.eval_dataset_config,
        data.eval_split,
    )
    if same_source:
        raise VdrError(
            f"--eval_dataset is the training data itself ('{data.eval_dataset}'): the evaluation would score rows the "
            "model trains on, and look better than it is. Give held-out rows, or --eval_split_size to carve them out."
        )
    output = Path(output_dir).expanduser().resolve()
    for flag, source in (("--train_dataset", data.train_dataset), ("--eval_dataset", data.eval_dataset)):
        if not source:
            continue
        path = Path(source).expanduser()
        if is_beir_folder(path):
            raise VdrError(
                f"{flag} '{source}' is a BEIR-layout evaluation set (corpus, queries, qrels), but the training scripts "
                "read rows of (query, page, hard negatives). Pass a rows file instead (prepare_vdr_data.py writes "
                f"eval.jsonl beside eval-beir/), and score the BEIR set with evaluate_vdr.py --dataset {source}."
            )
        folder = path if path.is_dir() else path.parent if path.is_file() or glob.glob(str(path)) else None
        if folder is not None and folder.resolve() == output:
            which = "training" if flag == "--train_dataset" else "evaluation"
            raise VdrError(
                f"--output_dir '{output_dir}' is the folder of the {which} data ('{source}'): checkpoints, final/ and "
                "metrics.json would be written among your data files. Choose another folder, e.g. outputs/my-run."
            )


def multi_vector_training_arguments(
    args: SentenceTransformerTrainingArguments, model: MultiVectorEncoder, projection_learning_rate: float | None
) -> MultiVectorEncoderTrainingArguments:
    """The parsed training arguments as the multi-vector trainer's class (same fields, plus ``max_length``), with
    the projection's own learning rate unless ``learning_rate_mapping`` was given explicitly. (The script parses
    ``SentenceTransformerTrainingArguments``: ``HfArgumentParser`` refuses the multi-vector class, whose
    ``max_length`` field is a union of types.)"""
    values = {f.name: getattr(args, f.name) for f in fields(args) if f.init}
    converted = MultiVectorEncoderTrainingArguments(**values)
    if projection_learning_rate is not None and not converted.learning_rate_mapping:
        converted.learning_rate_mapping = projection_learning_rates(model, projection_learning_rate)
    return converted
