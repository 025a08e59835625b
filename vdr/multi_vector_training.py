"""train_vdr.py with ``model_type: multi_vector``: the same steps, base model and rows, trained as a late-interaction
model with Sentence Transformers' ``MultiVectorEncoder``, ``CachedMultiVectorMultipleNegativesRankingLoss``,
``MultiVectorInformationRetrievalEvaluator`` and ``MultiVectorEncoderTrainer``.

The library's reference setting (examples/multi_vector_encoder/training/multimodal/
training_visual_document_retrieval.py): a new 128-d token projection trained at 10x the backbone's learning rate
(``projection_learning_rate``, through ``learning_rate_mapping``) and gradient clipping at 30 (``max_grad_norm``:
the random projection's gradients would make the default clip of 1.0 throttle every update).
"""

from __future__ import annotations

import logging
from dataclasses import fields
from functools import partial
from typing import Any

from sentence_transformers import SentenceTransformerTrainingArguments
from sentence_transformers.multi_vector_encoder import (
    MultiVectorEncoder,
    MultiVectorEncoderModelCardData,
    MultiVectorEncoderTrainer,
    MultiVectorEncoderTrainingArguments,
)
from transformers import set_seed

from vdr.config import (
    DataArguments,
    EvaluationArguments,
    LossArguments,
    ModelArguments,
    check_training_run,
)
from vdr.data import load_training_data
from vdr.errors import VdrError
from vdr.evaluation import build_training_evaluation, format_dims_table
from vdr.multi_vector import (
    build_multi_vector_evaluator,
    build_multi_vector_loss,
    build_multi_vector_model,
    evaluate_multi_vector,
    projection_learning_rates,
)
from vdr.provenance import write_run_config
from vdr.train_pages import presize_page_columns
from vdr.training import (
    check_enough_rows,
    finish_run,
    resolved_settings,
    save_to_final_dir,
    score_base_model,
    set_training_prompts,
    start_run,
    train,
    write_metrics,
)

logger = logging.getLogger(__name__)


def check_multi_vector_run(model_args: ModelArguments, lora_args: Any) -> None:
    if lora_args is not None and lora_args.lora:
        raise VdrError("--lora true is not supported with model_type multi_vector yet: drop --lora, or train a "
                       "single-vector model.")  # fmt: skip
    if model_args.truncate_dim is not None:
        raise VdrError(
            f"--truncate_dim {model_args.truncate_dim} does not apply to model_type multi_vector: its token vectors "
            "have no Matryoshka truncation. Drop --truncate_dim."
        )


def multi_vector_training_arguments(
    args: SentenceTransformerTrainingArguments, model: MultiVectorEncoder, projection_learning_rate: float | None
) -> MultiVectorEncoderTrainingArguments:
    """The parsed training arguments as the multi-vector trainer's class (same fields, plus ``max_length``), with
    the projection's own learning rate unless ``learning_rate_mapping`` was given explicitly."""
    values = {f.name: getattr(args, f.name) for f in fields(args) if f.init}
    converted = MultiVectorEncoderTrainingArguments(**values)
    if projection_learning_rate is not None and not converted.learning_rate_mapping:
        converted.learning_rate_mapping = projection_learning_rates(model, projection_learning_rate)
    return converted


def train_multi_vector(
    model_args: ModelArguments,
    data_args: DataArguments,
    loss_args: LossArguments,
    eval_args: EvaluationArguments,
    training_args: SentenceTransformerTrainingArguments,
    lora_args: Any,
    argv: list[str],
) -> dict[str, Any]:
    # 0. Before anything loads, as train_vdr.py: arguments, output folder, checkpoint to resume, the run's record
    check_multi_vector_run(model_args, lora_args)
    check_training_run(model_args, data_args, loss_args, training_args)
    groups = [model_args, data_args, loss_args, eval_args, training_args, *([lora_args] if lora_args else [])]
    run = start_run(groups, training_args, argv)

    # 1. Model: the base with a new 128-d token projection, a scoring mask and token-level normalisation. Seeded
    # first: the projection is randomly initialised, and the base model's score would vary from run to run.
    set_seed(training_args.seed)
    card = MultiVectorEncoderModelCardData(model_name=training_args.run_name or None)
    with training_args.main_process_first(desc="loading the model and data"):  # downloads and caches made once
        model = build_multi_vector_model(model_args, model_args.model_name_or_path, card)
        logger.info("Model:\n%s", model)

        # 2. Dataset: the same (query, page, hard negatives) rows as the single-vector recipe
        train_dataset, eval_rows = load_training_data(data_args, seed=training_args.seed)
    check_enough_rows(len(train_dataset), training_args)

    # 3. Loss: in-batch negatives scored with MaxSim, gradient-cached
    loss = build_multi_vector_loss(model, loss_args)

    # 4. Training arguments: the multi-vector class, the projection's learning rate, prompts per column
    set_training_prompts(training_args, model, data_args, eval_rows)
    args = multi_vector_training_arguments(training_args, model, model_args.projection_learning_rate)
    resolved = resolved_settings(model, args, run.resume_checkpoint)
    resolved["learning_rate_mapping"] = args.learning_rate_mapping
    write_run_config(training_args.output_dir, run.requested, argv, resolved)

    # 5. Evaluator: MaxSim retrieval on the held-out rows, before, during and after training
    evaluation, evaluator, base_scores = None, None, {}
    if eval_rows is not None:
        evaluation = build_training_evaluation(
            model, eval_rows, data_args, eval_args.eval_name, eval_args.evaluator_batch_size
        )
        evaluator = build_multi_vector_evaluator(evaluation.data, eval_args.eval_name, eval_args.evaluator_batch_size)
        if eval_args.evaluate_base_model:  # on the main process; the others wait
            score_base = partial(evaluate_multi_vector, model, evaluation.data, eval_args.evaluator_batch_size)
            base_scores = score_base_model(training_args, score_base)

    # 6. Trainer. No eval_dataset, as in the library's example: the retrieval evaluator is the signal, and an eval
    # loss would collate every page column of every eval row at each evaluation. Pages resized once, as train_vdr.py.
    if data_args.presize_pages:
        train_dataset = presize_page_columns(model, train_dataset)
    trainer = MultiVectorEncoderTrainer(
        model=model, args=args, train_dataset=train_dataset, loss=loss, evaluator=evaluator
    )
    train(trainer, run.resume_checkpoint, argv)

    # 7-8. On the main process only (the others wait): save the final model before anything else can fail, then
    # the final evaluation and metrics.json (keyed by the token dimension)
    def save_and_evaluate() -> tuple:
        final_dir = save_to_final_dir(model, training_args.output_dir)
        final_scores: dict = {}
        if evaluation is not None:
            final_scores = evaluate_multi_vector(model, evaluation.data, eval_args.evaluator_batch_size)
            table = format_dims_table({"base": base_scores, "final": final_scores})
            logger.info("Before and after training:\n%s", table)
        return final_dir, write_metrics(training_args.output_dir, eval_args.eval_name, base_scores, final_scores)

    # 9. (Optional) Push to the Hub, once, after the local save
    return finish_run(training_args, run, save_and_evaluate, model)
