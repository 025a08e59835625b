"""The reranker: a Sentence Transformers ``CrossEncoder`` over a Qwen3-VL model scoring (text query, page image).

Its score is ``logit[yes] - logit[no]`` of the answer token after the prompt (``LogitScore``), which is how the
Qwen3-VL rerankers are trained and served."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentence_transformers.base.modules import Transformer
from sentence_transformers.cross_encoder import CrossEncoder
from sentence_transformers.cross_encoder.modules import LogitScore
from sentence_transformers.util.file_io import load_file_path

from vdr.errors import VdrError
from vdr.models.loading import (
    PROCESSING_KWARGS,
    check_dtype_and_attention,
    check_pixel_bounds,
    model_kwargs,
    processor_kwargs,
    resolve_model_path,
)

logger = logging.getLogger(__name__)

#: Qwen's default task instruction for its rerankers (what they were trained with when no other is given).
DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."


#: Answer tokens tried in order: a tokenizer without single "yes" / "no" tokens (the tiny model's) uses "1" / "0".
ANSWER_TOKEN_CHOICES = (("yes", "no"), ("1", "0"))


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
            'meets the requirements ... the answer can only be "yes" or "no".\'), naming the answer tokens.'
        },
    )

    def __post_init__(self):
        check_pixel_bounds(self.min_pixels, self.max_pixels)
        check_dtype_and_attention(self.torch_dtype, self.attn_implementation)
        if self.answer_tokens is not None and len(self.answer_tokens) != 2:
            raise ValueError(f"answer_tokens takes two tokens (relevant, not relevant), got {self.answer_tokens}.")


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
