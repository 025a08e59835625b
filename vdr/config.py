"""Configuration: typed dataclasses, a YAML file via ``--config``, and command-line overrides.

Precedence is dataclass default < YAML file < command line. The YAML values become argparse defaults, so
they go through the same type conversion as command-line values (PyYAML reads ``2e-5`` as a string).
Unknown keys, in the YAML file or on the command line, fail before anything is loaded, naming the key and
the closest valid one. ``SentenceTransformerTrainingArguments`` is used as it is.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from vdr.errors import VdrError

DEFAULT_MATRYOSHKA_DIMS = [2048, 1536, 1024, 512, 256, 128, 64]
#: Single-vector page storage precisions evaluate_vdr.py scores (vdr/quantization.py).
STORAGE_PRECISIONS = ("float32", "int8", "binary", "binary_rescored")


@dataclass
class ModelLoadingArguments:
    """How to load a model: shared by training and evaluation, so a model is evaluated as it was trained."""

    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    attn_implementation: str | None = field(
        default=None,
        metadata={
            "help": "Attention kernel: 'flash_attention_2', 'sdpa' or 'eager'. flash_attention_2 falls back "
            "to sdpa, with a warning, when flash-attn or a CUDA GPU is missing."
        },
    )
    torch_dtype: str | None = field(
        default=None,
        metadata={
            "help": "Weight dtype: 'bfloat16', 'float16', 'float32' or 'auto'. Default: the checkpoint's own dtype "
            "(transformers 5 loads in the dtype the weights were saved in)."
        },
    )
    min_pixels: int | None = field(
        default=None, metadata={"help": "Smallest page size in pixels after resizing (processor min_pixels)."}
    )
    max_pixels: int | None = field(
        default=None,
        metadata={"help": "Largest page size in pixels after resizing (processor max_pixels). Lower saves memory."},
    )
    query_prompt: str | None = field(
        default=None, metadata={"help": "Text prepended to queries, in training and stored in the saved model."}
    )
    document_prompt: str | None = field(
        default=None, metadata={"help": "Text prepended to documents, in training and stored in the saved model."}
    )


@dataclass
class ModelArguments(ModelLoadingArguments):
    """Which model to finetune (and the loading options above)."""

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
    # late interaction (vdr/multi_vector.py, vdr/multi_vector_training.py)
    model_type: str = field(
        default="single_vector",
        metadata={
            "help": "'single_vector' (one embedding per page, MatryoshkaLoss) or 'multi_vector' (late interaction: "
            "Sentence Transformers' MultiVectorEncoder, a 128-d vector per token scored with MaxSim).",
            "choices": ["single_vector", "multi_vector"],
        },
    )
    projection_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "multi_vector: learning rate of the new, randomly initialised token projection (the library's "
            "example: 2e-4, 10x the backbone's). Default: the same as learning_rate."
        },
    )

    def __post_init__(self):
        # argparse checks choices on the command line only; a YAML value arrives as a default and is checked here.
        if self.model_type not in ("single_vector", "multi_vector"):
            raise ValueError(f"model_type must be 'single_vector' or 'multi_vector', got {self.model_type!r}.")


@dataclass
class SourceArguments:
    """Options of every data source: where relative image paths point, and the generated pages' size and seed."""

    image_root: str | None = field(
        default=None,
        metadata={
            "help": "Folder that relative image paths in parquet/JSON-lines files are relative to. "
            "Default: the folder of the file."
        },
    )
    num_generated_rows: int = field(
        default=256, metadata={"help": "Rows to generate when a source is 'generated:pages' (or pages-beir)."}
    )
    generated_seed: int = field(default=0, metadata={"help": "Seed of the generated pages."})


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
    # --- training data path (issue #13) ---
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
        if self.num_generated_rows < 1:
            raise ValueError(f"num_generated_rows must be 1 or more, got {self.num_generated_rows}.")


@dataclass
class LossArguments:
    """MatryoshkaLoss over CachedMultipleNegativesRankingLoss."""

    matryoshka_dims: list[int] = field(
        default_factory=lambda: list(DEFAULT_MATRYOSHKA_DIMS),
        metadata={"help": "Embedding dimensions trained (and evaluated) by MatryoshkaLoss, largest first."},
    )
    mini_batch_size: int = field(
        default=1,
        metadata={"help": "Gradient-cache mini-batch: memory grows with it, the result does not change."},
    )
    gather_across_devices: bool = field(
        default=False,
        metadata={"help": "Multi-GPU: use the other devices' embeddings as extra in-batch negatives."},
    )

    def __post_init__(self):
        if not self.matryoshka_dims or any(dim < 1 for dim in self.matryoshka_dims):
            raise ValueError(f"matryoshka_dims must be positive integers, got {self.matryoshka_dims}.")
        if self.matryoshka_dims != sorted(self.matryoshka_dims, reverse=True):
            raise ValueError(f"matryoshka_dims must be listed largest first, got {self.matryoshka_dims}.")
        if self.mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be 1 or more, got {self.mini_batch_size}.")


@dataclass
class EvaluationArguments:
    """The retrieval evaluation run before, during and after training."""

    eval_name: str = field(default="vdr-eval", metadata={"help": "Name of the evaluator (prefixes the metrics)."})
    evaluator_batch_size: int = field(default=16, metadata={"help": "Encoding batch size of the retrieval evaluator."})
    evaluate_base_model: bool = field(default=True, metadata={"help": "Score the model before training."})

    def __post_init__(self):
        if self.evaluator_batch_size < 1:
            raise ValueError(f"evaluator_batch_size must be 1 or more, got {self.evaluator_batch_size}.")


def check_training_run(
    model: ModelArguments, data: DataArguments, loss: LossArguments, training: Any
) -> None:
    """An embedding run's checks that span argument groups, run before anything loads (a mistake must not cost a
    model load): the checks every training script shares, then the saved model's default dimension."""
    check_run_arguments(data, training)
    if model.truncate_dim is not None and model.truncate_dim not in loss.matryoshka_dims:
        raise VdrError(
            f"--truncate_dim {model.truncate_dim} is not one of the trained matryoshka_dims {loss.matryoshka_dims}: "
            "the saved model would default to a dimension it was not trained at. Pick one of those dims."
        )


def check_run_arguments(data: DataArguments, training: Any) -> None:
    """Checks every training script (embedder, multi-vector, reranker) runs before anything loads: batch sizes,
    evaluation data for an evaluation strategy, the output folder, and a repository name for a push."""
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(training, name) < 1:
            raise VdrError(f"--{name} must be 1 or more, got {getattr(training, name)}.")
    eval_strategy = getattr(training.eval_strategy, "value", training.eval_strategy)
    if eval_strategy != "no" and not (data.eval_dataset or data.eval_split_size):
        raise VdrError(
            f"--eval_strategy {eval_strategy} evaluates during training, but there is no evaluation "
            "data: set --eval_dataset, or --eval_split_size to hold rows out, or --eval_strategy no."
        )
    if Path(training.output_dir).exists() and not Path(training.output_dir).is_dir():
        raise VdrError(f"--output_dir '{training.output_dir}' is an existing file, not a folder. Choose another path.")
    if training.push_to_hub and not (training.hub_model_id or training.run_name):
        raise VdrError("--push_to_hub true needs a repository name: set --hub_model_id you/your-model.")


def looks_like_local_path(value: str) -> bool:
    """Whether a model or dataset reference is meant as a local path rather than a Hub id."""
    return (
        value.startswith((".", "/", "~"))
        or value.count("/") > 1
        or Path(value).suffix in (".parquet", ".jsonl", ".json")
    )


class ConfigParser(HfArgumentParser):
    """``HfArgumentParser`` with ``--config file.yaml`` plus overrides, strict about unknown keys."""

    def __init__(self, dataclass_types: Sequence[type], prog: str | None = None, description: str | None = None):
        super().__init__(
            dataclass_types,
            prog=prog,
            description=description,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            allow_abbrev=False,  # a prefix such as --max_pixel must not silently mean --max_pixels
        )
        self.add_argument("--config", default=None, help="YAML file of arguments; command-line flags override it.")

    def error(self, message: str) -> None:
        # argparse's default prints the whole usage (hundreds of training flags) before the message.
        raise VdrError(f"{message}. Run with --help to list the valid arguments.")

    def valid_keys(self) -> list[str]:
        return [action.dest for action in self._actions if action.dest not in ("help", "config")]

    def unknown_key_error(self, key: str, where: str) -> VdrError:
        close = difflib.get_close_matches(key, self.valid_keys(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else " Run with --help to list the valid arguments."
        return VdrError(f"Unknown argument '{key}' in {where}.{hint}")

    def parse(self, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
        argv = list(sys.argv[1:] if argv is None else argv)
        config_path = _config_path(argv)
        if config_path is not None:
            self._apply_yaml_defaults(config_path)
        namespace, remaining = self.parse_known_args(argv)
        if remaining:
            flag = next((arg for arg in remaining if arg.startswith("-")), remaining[0])
            raise self.unknown_key_error(flag.lstrip("-").split("=")[0], "the command line")
        return self._namespace_to_dataclasses(namespace)

    def _apply_yaml_defaults(self, path: Path) -> None:
        values = load_yaml(path)
        valid = set(self.valid_keys())
        for key in values:
            if key not in valid:
                raise self.unknown_key_error(key, str(path))
        hints = self._type_hints()
        for action in self._actions:
            if action.dest not in values:
                continue
            action.required = False
            values[action.dest] = _yaml_value(action, hints.get(action.dest), values[action.dest], path)
        self.set_defaults(**values)

    def _type_hints(self) -> dict[str, Any]:
        hints: dict[str, Any] = {}
        for dtype in self.dataclass_types:
            hints.update(typing.get_type_hints(dtype))
        return hints

    def _namespace_to_dataclasses(self, namespace: argparse.Namespace) -> tuple[Any, ...]:
        values = vars(namespace)
        values.pop("config", None)
        outputs = []
        for dtype in self.dataclass_types:
            names = {f.name for f in fields(dtype) if f.init}
            kwargs = {name: values[name] for name in names if name in values}
            try:
                outputs.append(dtype(**kwargs))
            except (ValueError, TypeError) as error:
                raise VdrError(f"Invalid {dtype.__name__}: {error}") from None
        return tuple(outputs)


def _yaml_value(action: argparse.Action, hint: Any, value: Any, path: Path) -> Any:
    """Check a YAML value against its field's type, the way argparse would check the same value given as a flag.

    PyYAML types values itself (``null``, lists, numbers): a value of the wrong kind is named with its file and
    key here, rather than failing later inside a library.
    """
    allowed = _hint_types(hint)
    where = f"Config file '{path}', key '{action.dest}'"
    if value is None:
        if type(None) in allowed:
            return None
        raise VdrError(f"{where}: null is not allowed; give a value or remove the key to use the default.")
    is_list_field = action.nargs in ("+", "*")
    if isinstance(value, dict) and dict not in allowed:
        raise VdrError(f"{where}: expected a single value, got a mapping {value!r}.")
    if isinstance(value, list):
        if not is_list_field and list not in allowed:
            raise VdrError(f"{where}: expected a single value, got the list {value!r}.")
        return [_convert(action, item, where) for item in value]
    if is_list_field:
        return [_convert(action, value, where)]  # "negative_columns: negative_0" means one column
    return _convert(action, value, where)


def _hint_types(hint: Any) -> set[Any]:
    """The plain types a field's annotation admits (``int | None`` -> {int, NoneType})."""
    if hint is None:
        return {object}
    return {typing.get_origin(arg) or arg for arg in (typing.get_args(hint) or (hint,))}


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    """Convert a YAML scalar with the flag's own type function, as argparse converts command-line strings."""
    if action.type is None or isinstance(value, dict):
        return value
    if isinstance(value, bool) and action.type in (int, float):
        raise VdrError(f"{where}: expected a number, got {value!r}.")
    if isinstance(value, float) and action.type is int and not value.is_integer():
        raise VdrError(f"{where}: expected a whole number, got {value!r}.")
    try:
        return action.type(value if isinstance(value, str) else str(value) if action.type is not int else value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        raise VdrError(f"{where}: {value!r} is not valid ({error}).") from None


def _config_path(argv: list[str]) -> Path | None:
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            return Path(argv[index + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    return None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping of argument names to values, with a clear error for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise VdrError(f"Config file '{path}' does not exist. Pass an existing YAML file to --config.")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise VdrError(f"Config file '{path}' is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise VdrError(f"Config file '{path}' must be a mapping of argument names to values.")
    return values


class RepeatableFlag(argparse._ExtendAction):
    """A repeatable list flag (``--model a --model b``) whose first use on the command line replaces the value
    from the YAML file instead of adding to it (argparse's ``extend`` appends to its default)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_repeatable_flags_given", set())
        if self.dest not in given:
            given.add(self.dest)
            setattr(namespace, self.dest, [])
        super().__call__(parser, namespace, values, option_string)


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
    all_checkpoints: bool = field(
        default=False, metadata={"help": "For a training output folder, also score every checkpoint-* in it."}
    )
    truncate_dims: list[int] | None = field(
        default=None,
        metadata={"help": "Embedding dims to score. Default: the model's Matryoshka dims if known, else its full dim."},
    )
    batch_size: int = field(default=16, metadata={"help": "Encoding batch size."})
    output_dir: str = field(default="outputs/evaluation", metadata={"help": "Where results and plots are written."})
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
    # storage against quality, late interaction, text baseline (vdr/deployment.py)
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
        if not self.model:
            raise ValueError("give at least one --model")
        if not self.dataset:
            raise ValueError("give at least one --dataset")
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
