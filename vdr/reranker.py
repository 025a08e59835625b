"""The reranker: a Sentence Transformers ``CrossEncoder`` over a Qwen3-VL model scoring (text query, page image).

Its score is ``logit[yes] - logit[no]`` of the answer token after the prompt (``LogitScore``), which is how the
Qwen3-VL rerankers are trained and served. This module builds that model, shapes (query, page, hard negatives)
rows for each cross-encoder loss, and evaluates it by reranking each query's positive and hard negatives.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import Dataset, Image, List, concatenate_datasets
from sentence_transformers.base.modules import Transformer
from sentence_transformers.cross_encoder import CrossEncoder
from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
from sentence_transformers.cross_encoder.losses import (
    BinaryCrossEntropyLoss,
    CachedMultipleNegativesRankingLoss,
    LambdaLoss,
)
from sentence_transformers.cross_encoder.modules import LogitScore
from sentence_transformers.util.file_io import load_file_path
from torch import nn

from vdr.config import DataArguments, check_run_arguments
from vdr.data import RetrievalData, negative_columns_of, retrieval_from_rows
from vdr.errors import VdrError
from vdr.evaluation import presize_corpus
from vdr.model import PROCESSING_KWARGS, model_kwargs, processor_kwargs, resolve_model_path
from vdr.train_pages import presize_page_columns
from vdr.training import METRICS_FILE

logger = logging.getLogger(__name__)

#: Qwen's default task instruction for its rerankers (what they were trained with when no other is given).
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
#: Answer tokens tried in order: a tokenizer without single "yes" / "no" tokens (the tiny model's) uses "1" / "0".
ANSWER_TOKEN_CHOICES = (("yes", "no"), ("1", "0"))
LOSSES = ("bce", "lambda", "cmnrl")


@dataclass
class RerankerModelArguments:
    """Which reranker to finetune, and how to load it."""

    model_name_or_path: str = field(
        default="Qwen/Qwen3-VL-Reranker-2B",
        metadata={
            "help": "Hub id or local folder: a Qwen3-VL reranker, a CrossEncoder saved by this project, or a bare "
            "vision-language model (given a yes/no LogitScore head). 'generated:tiny-qwen3-vl' builds a tiny random "
            "Qwen3-VL offline."
        },
    )
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit)."})
    attn_implementation: str | None = field(
        default=None,
        metadata={"help": "'flash_attention_2' (falls back to sdpa without flash-attn or a GPU), 'sdpa' or 'eager'."},
    )
    torch_dtype: str | None = field(default=None, metadata={"help": "Weight dtype: bfloat16, float16, float32, auto."})
    min_pixels: int | None = field(default=None, metadata={"help": "Smallest page size in pixels after resizing."})
    max_pixels: int | None = field(
        default=None, metadata={"help": "Largest page size in pixels after resizing. Lower saves memory and time."}
    )
    answer_tokens: list[str] | None = field(
        default=None,
        metadata={
            "help": "The relevant / not-relevant answer tokens scored by the LogitScore head (two single tokens). "
            "Default: yes no, or 1 0 for a tokenizer without single yes/no tokens. Ignored for a saved CrossEncoder."
        },
    )
    instruction: str = field(
        default=DEFAULT_INSTRUCTION, metadata={"help": "The task instruction rendered into every prompt."}
    )
    system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "The system prompt stating the task. Default: Qwen's reranker prompt ('Judge whether the Document "
            "meets the requirements ... the answer can only be \"yes\" or \"no\".'), naming the answer tokens."
        },
    )

    def __post_init__(self):
        if self.answer_tokens is not None and len(self.answer_tokens) != 2:
            raise ValueError(f"answer_tokens takes two tokens (relevant, not relevant), got {self.answer_tokens}.")


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


def check_reranker_run(data: DataArguments, loss: RerankerLossArguments, training: Any) -> None:
    """Checks run before anything loads: the training checks shared with train_vdr.py, and the loss's columns."""
    check_run_arguments(data, training)
    if loss.loss in ("bce", "lambda") and not data.negative_columns:
        raise VdrError(
            f"--loss {loss.loss} learns from hard negatives, but --negative_columns is empty. Give at least one "
            "negative column, or use --loss cmnrl (in-batch negatives)."
        )


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def judge_prompt(answer_tokens: tuple[str, str]) -> str:
    """The system prompt of Qwen's rerankers, naming this model's answer tokens."""
    yes, no = answer_tokens
    return (
        "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
        f'Note that the answer can only be "{yes}" or "{no}".'
    )


def reranker_chat_template(system_prompt: str, instruction: str) -> str:
    """A chat template rendering a (query, document) pair the way Qwen3-VL-Reranker is prompted:

    ``<|im_start|>system\\n{system_prompt}<|im_end|>\\n<|im_start|>user\\n<Instruct>: {instruction}<Query>:{query}\\n
    <Document>:{document}<|im_end|>\\n<|im_start|>assistant\\n``

    A system message (a Sentence Transformers prompt) replaces the instruction. Images render as Qwen-VL's
    ``<|vision_start|><|image_pad|><|vision_end|>``, which the processor expands to the page's visual tokens.
    Literal text sits inside ``{{ }}`` so Jinja's whitespace trimming cannot eat its newlines.
    """
    prefix = f"<|im_start|>system\n{system_prompt}<|im_end|>\n<|im_start|>user\n<Instruct>: "
    return (
        "{%- macro render(content) -%}"
        "{%- if content is string -%}{{ content }}"
        "{%- else -%}{%- for part in content -%}"
        "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
        "{%- elif part['type'] == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
        "{%- endif -%}{%- endfor -%}{%- endif -%}"
        "{%- endmacro -%}"
        "{%- set turn = namespace(system=none, query='', document='') -%}"
        "{%- for message in messages -%}"
        "{%- if message['role'] == 'system' -%}{%- set turn.system = message['content'] -%}"
        "{%- elif message['role'] == 'query' -%}{%- set turn.query = message['content'] -%}"
        "{%- elif message['role'] == 'document' -%}{%- set turn.document = message['content'] -%}"
        "{%- endif -%}{%- endfor -%}"
        f"{{{{ {json.dumps(prefix)} }}}}"
        f"{{{{ render(turn.system) if turn.system is not none else {json.dumps(instruction)} }}}}"
        "{{ '<Query>:' }}{{ render(turn.query) }}"
        "{{ '\\n<Document>:' }}{{ render(turn.document) }}"
        "{{ '<|im_end|>\\n' }}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


def answer_token_ids(tokenizer: Any, requested: list[str] | None) -> tuple[tuple[str, str], tuple[int, int]]:
    """The (relevant, not relevant) answer tokens and their ids; each must be a single token of the vocabulary."""
    choices = [tuple(requested)] if requested else list(ANSWER_TOKEN_CHOICES)
    for tokens in choices:
        ids = [tokenizer.convert_tokens_to_ids(token) for token in tokens]
        if all(isinstance(i, int) and i != tokenizer.unk_token_id for i in ids):
            return tokens, (ids[0], ids[1])
    raise VdrError(
        f"The tokenizer has no single-token answer pair among {', '.join(' / '.join(c) for c in choices)}: the "
        "LogitScore head scores one vocabulary token each. Set --answer_tokens to two single tokens of this model."
    )


def build_reranker(args: RerankerModelArguments) -> CrossEncoder:
    """Load ``args.model_name_or_path`` as a ``CrossEncoder`` scoring logit[yes] - logit[no].

    A CrossEncoder whose saved modules include a working ``LogitScore`` (one saved by this project) loads as it is.
    Anything else (a bare vision-language model, or a Qwen3-VL reranker as published, for which a plain
    ``CrossEncoder(path)`` builds the wrong head) becomes an any-to-any Transformer with its language-model head, a
    LogitScore on the answer tokens, and the reranker chat template.
    """
    path = resolve_model_path(args.model_name_or_path)
    load_kwargs = {"model_kwargs": model_kwargs(args), "processor_kwargs": processor_kwargs(args)}
    if args.revision:
        load_kwargs = {name: {**kwargs, "revision": args.revision} for name, kwargs in load_kwargs.items()}
    try:
        if _has_working_logit_score(path, args.revision):
            return CrossEncoder(path, **load_kwargs)
        return _build_from_vlm(path, args, load_kwargs)
    except VdrError:
        raise
    except (OSError, ValueError) as error:
        raise VdrError(
            f"Could not load reranker '{args.model_name_or_path}': {type(error).__name__}: {error}. Check the path "
            "or Hub id (and HF_TOKEN / network access for Hub models)."
        ) from None


def _has_working_logit_score(path: str, revision: str | None) -> bool:
    """Whether ``modules.json`` declares a LogitScore whose saved config names its answer token."""
    modules_file = load_file_path(path, "modules.json", revision=revision)
    if modules_file is None:
        return False
    for module in json.loads(Path(modules_file).read_text()):
        if module.get("type", "").endswith("LogitScore"):
            config_file = load_file_path(path, "config.json", subfolder=module.get("path", ""), revision=revision)
            return config_file is not None and "true_token_id" in json.loads(Path(config_file).read_text())
    return False


def _build_from_vlm(path: str, args: RerankerModelArguments, load_kwargs: dict) -> CrossEncoder:
    logger.info("Building a reranker from '%s': language-model head, LogitScore on the answer tokens", path)
    transformer = Transformer(path, transformer_task="any-to-any", processing_kwargs=PROCESSING_KWARGS, **load_kwargs)
    tokens, (true_id, false_id) = answer_token_ids(transformer.tokenizer, args.answer_tokens)
    system_prompt = args.system_prompt if args.system_prompt is not None else judge_prompt(tokens)
    transformer.processor.chat_template = reranker_chat_template(system_prompt, args.instruction)
    return CrossEncoder(modules=[transformer, LogitScore(true_token_id=true_id, false_token_id=false_id)])


# ---------------------------------------------------------------------------------------------------------------------
# Training data: pages resized once, rows shaped for the loss
# ---------------------------------------------------------------------------------------------------------------------


def presize_pages(model: CrossEncoder, rows: Dataset, columns: list[str]) -> Dataset:
    """Resize every page of ``columns`` once, to the model's pixel budget, with the processor's own resize.

    The cross-encoder losses call ``model.preprocess`` in the training loop's own process, so a full-size page would
    be decoded and resized there at every epoch; a presized page costs a small fraction of that, and gives the same
    pixel values (the processor then finds it at its target size). The embedding trainer's presizing
    (``vdr.train_pages``: cached on disk by page content and processor settings, never in the data's own folder),
    with the columns kept as images.
    """
    presized = presize_page_columns(model, rows, columns=columns)
    for column in columns:
        presized = presized.cast_column(column, Image())
    return presized


def rows_for_loss(rows: Dataset, loss: str, query: str, positive: str, negatives: list[str]) -> Dataset:
    """(query, positive, negatives...) rows in the shape ``loss`` reads.

    - ``bce``: one (query, document, label) pair per page: 1 for the positive, 0 for each negative;
    - ``lambda``: (query, documents, labels): the positive and the negatives as one list, labels [1, 0, ...];
    - ``cmnrl``: the rows as they are, (query, positive, negative_...) n-tuples.
    """
    if loss == "cmnrl":
        return rows.select_columns([query, positive, *negatives])
    if loss == "bce":
        parts = [
            rows.select_columns([query, column])
            .rename_column(column, "document")
            .add_column("label", [float(column == positive)] * len(rows))
            for column in [positive, *negatives]
        ]
        return concatenate_datasets(parts)  # the trainer's sampler shuffles
    pages = [positive, *negatives]
    undecoded = _undecoded(rows, pages)
    lists = undecoded.map(
        lambda row: {"documents": [row[column] for column in pages], "labels": [1.0] + [0.0] * len(negatives)},
        remove_columns=pages,
        desc="Building ranking lists",
    )
    return lists.cast_column("documents", List(Image())).select_columns([query, "documents", "labels"])


def _undecoded(rows: Dataset, columns: list[str]) -> Dataset:
    """The rows with ``columns`` read as encoded bytes / paths: pages are decoded only where their pixels are used."""
    for column in columns:
        rows = rows.cast_column(column, Image(decode=False))
    return rows


def build_reranker_loss(model: CrossEncoder, args: RerankerLossArguments, num_negatives: int) -> nn.Module:
    if args.loss == "bce":
        import torch

        pos_weight = args.pos_weight if args.pos_weight is not None else float(max(num_negatives, 1))
        return BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(pos_weight))
    if args.loss == "lambda":
        return LambdaLoss(model, mini_batch_size=args.mini_batch_size)
    return CachedMultipleNegativesRankingLoss(
        model, num_negatives=args.num_in_batch_negatives, mini_batch_size=args.mini_batch_size
    )


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation during training
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class RerankEvaluation:
    """The evaluation of a training run: each query's positive and hard negatives (pages resized once), reranked."""

    data: RetrievalData
    evaluator: CrossEncoderRerankingEvaluator

    def __call__(self, model: CrossEncoder) -> dict[str, float]:
        """NDCG@10, MRR@10 and MAP, without the evaluator's name prefix."""
        prefix = f"{self.evaluator.name}_" if self.evaluator.name else ""
        scores = self.evaluator(model)
        return {name.removeprefix(prefix): float(value) for name, value in scores.items() if "base_" not in name}


def build_rerank_evaluation(
    model: CrossEncoder, eval_rows: Dataset, data_args: DataArguments, name: str, batch_size: int
) -> RerankEvaluation:
    """Sentence Transformers' ``CrossEncoderRerankingEvaluator`` over each evaluation row's positive and every
    negative column (the embedding script's evaluation pages, reranked per query instead of retrieved)."""
    negatives = negative_columns_of(eval_rows, data_args.eval_negative_columns)
    columns = (data_args.query_column, data_args.positive_column, negatives, "Evaluation data")
    data = presize_corpus(model, retrieval_from_rows(eval_rows, *columns))
    evaluator = CrossEncoderRerankingEvaluator(
        samples=rerank_samples(data, num_negatives=len(negatives)), name=name, batch_size=batch_size
    )
    return RerankEvaluation(data, evaluator)


def rerank_samples(data: RetrievalData, num_negatives: int) -> list[dict[str, Any]]:
    """One evaluator sample per row: its query, its positive, its own negatives (ids as ``retrieval_from_rows``)."""
    num_rows = len(data.queries)
    return [
        {
            "query": data.queries[row],
            "positive": [data.corpus[row]],
            "negative": [data.corpus[num_rows * (k + 1) + row] for k in range(num_negatives)],
        }
        for row in range(num_rows)
    ]


def write_reranker_metrics(
    output_dir: str, eval_name: str, base: dict[str, float], final: dict[str, float], metric: str = "ndcg@10"
) -> dict[str, Any]:
    """Write ``metrics.json``: the reranking metrics before and after training, and a one-line summary."""
    record: dict[str, Any] = {"eval_name": eval_name, "metric": metric, "base": base, "final": final}
    record[f"base_{metric}"] = base.get(metric)
    record[f"final_{metric}"] = final.get(metric)
    if not final:
        record["summary"] = "No evaluation data was given, so no reranking metrics were computed."
    else:
        before = f"{base[metric]:.4f} -> " if metric in base else ""
        where = f"reranking {eval_name} (positive + hard negatives)"
        record["summary"] = f"{metric.upper()} {where}: {before}{final[metric]:.4f}"
    (Path(output_dir) / METRICS_FILE).write_text(json.dumps(record, indent=2))
    return record
