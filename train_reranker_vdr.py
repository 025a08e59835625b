"""Finetune a multimodal reranker for visual document retrieval: a CrossEncoder scoring (text query, page image).

The second half of a retrieval stack (train_vdr.py trains the embedding model that retrieves; this reranks its
top pages), on the same data and with the same conventions: model, dataset, loss, training arguments, evaluator,
trainer, final evaluation, save, optional push.

Usage:
    # Offline quickstart on a CPU (tiny random Qwen3-VL with a language-model head, generated pages):
    python train_reranker_vdr.py --config configs/quickstart-reranker.yaml

    # Qwen3-VL-Reranker-2B on the VDR data (a GPU with bf16 and Hub access):
    python train_reranker_vdr.py --config configs/qwen3-vl-reranker-2b-vdr.yaml

    # Another loss: LambdaLoss over each query's ranking list, or the cached in-batch loss:
    python train_reranker_vdr.py --config configs/qwen3-vl-reranker-2b-vdr.yaml --loss lambda

Run `python train_reranker_vdr.py --help` for every argument, CrossEncoderTrainingArguments included.
"""

from __future__ import annotations

import logging
import sys

from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
from transformers import set_seed

from vdr.config import ConfigParser, DataArguments, EvaluationArguments
from vdr.data import load_training_data
from vdr.errors import configure_logging, run_cli
from vdr.reranker import (
    RerankerLossArguments,
    RerankerModelArguments,
    build_rerank_evaluation,
    build_reranker,
    build_reranker_loss,
    check_reranker_run,
    presize_pages,
    rows_for_loss,
    write_reranker_metrics,
)
from vdr.training import check_enough_rows, finish_run, save_to_final_dir, start_run, train

logger = logging.getLogger("train_reranker_vdr")


def make_parser() -> ConfigParser:
    groups = (RerankerModelArguments, DataArguments, RerankerLossArguments, EvaluationArguments)
    return ConfigParser(
        (*groups, CrossEncoderTrainingArguments),
        prog="train_reranker_vdr.py",
        description=__doc__.split("\n")[0],
    )


def main(
    model_args: RerankerModelArguments,
    data_args: DataArguments,
    loss_args: RerankerLossArguments,
    eval_args: EvaluationArguments,
    training_args: CrossEncoderTrainingArguments,
    argv: list[str] | None = None,
) -> dict:
    # 0. Before anything loads: the arguments, the output folder and the checkpoint to resume from; the run's record
    check_reranker_run(data_args, loss_args, training_args)
    run = start_run([model_args, data_args, loss_args, eval_args, training_args], training_args, argv or [])

    # 1. Model: a CrossEncoder scoring logit[yes] - logit[no] of the answer token after the reranker prompt. Seeded
    #    first: weights the checkpoint lacks (the language-model head of an embedding model) are initialised here
    set_seed(training_args.seed)
    model = build_reranker(model_args)
    logger.info("Reranker:\n%s", model)

    # 2. Dataset: (query, page, hard negatives) rows, pages resized once to the model's pixel budget (the losses
    #    preprocess in this process), shaped for the loss: pairs, lists or n-tuples
    train_rows, eval_rows = load_training_data(data_args, seed=training_args.seed)
    check_enough_rows(len(train_rows), training_args)
    train_rows = presize_pages(model, train_rows, [data_args.positive_column, *data_args.negative_columns])
    query, positive, negatives = data_args.query_column, data_args.positive_column, data_args.negative_columns
    train_dataset = rows_for_loss(train_rows, loss_args.loss, query, positive, negatives)
    logger.info("Training rows (%s): %s", loss_args.loss, train_dataset)

    # 3. Loss: BinaryCrossEntropyLoss, LambdaLoss or CachedMultipleNegativesRankingLoss
    loss = build_reranker_loss(model, loss_args, num_negatives=len(negatives))

    # 4. Evaluator: NDCG@10 of reranking each query's positive + hard negatives, before, during and after training
    evaluation, base_scores = None, {}
    if eval_rows is not None:
        evaluation = build_rerank_evaluation(
            model, eval_rows, data_args, eval_args.eval_name, eval_args.evaluator_batch_size
        )
        if eval_args.evaluate_base_model:
            base_scores = evaluation(model)
            logger.info("Base reranker: %s", base_scores)

    # 5. Trainer (training arguments are CrossEncoderTrainingArguments, parsed as they are)
    trainer = CrossEncoderTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        loss=loss,
        evaluator=evaluation.evaluator if evaluation else None,
    )
    train(trainer, run.resume_checkpoint, argv or [])

    # 6-7. On the main process only: save the final model before anything else can fail, then the final evaluation
    # and metrics.json
    def save_and_evaluate() -> tuple:
        final_dir = save_to_final_dir(model, training_args.output_dir)
        final_scores = evaluation(model) if evaluation else {}
        metrics = write_reranker_metrics(training_args.output_dir, eval_args.eval_name, base_scores, final_scores)
        return final_dir, metrics

    # 8. (Optional) Push to the Hugging Face Hub, once, after the local save
    return finish_run(training_args, run, save_and_evaluate, model)


def cli(argv: list[str] | None = None) -> None:
    """The command line: parse, run, and turn a user's mistake into one message and an exit code."""
    argv = sys.argv if argv is None else argv
    run_cli(lambda: main(*make_parser().parse(argv[1:]), argv=argv))


if __name__ == "__main__":
    configure_logging()
    cli()
