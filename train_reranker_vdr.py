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

from vdr.cli import ConfigParser, configure_logging, run_cli
from vdr.data.page_images import presize_page_columns
from vdr.data.sources import load_training_data
from vdr.models.reranker import RerankerModelArguments, build_reranker
from vdr.training.arguments import DataArguments, EvaluationArguments, RerankerLossArguments, check_reranker_run
from vdr.training.distributed import main_process_only
from vdr.training.evaluators import build_eval_set, build_rerank_evaluator, evaluate_reranker
from vdr.training.losses import build_reranker_loss, rows_for_loss
from vdr.training.run import (
    check_enough_rows,
    push_to_hub,
    save_to_final_dir,
    start_run,
    train,
    write_reranker_metrics,
)

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
    argv = argv or []
    # 0. Before anything loads: the arguments, the output folder and the checkpoint to resume from; the run's record
    check_reranker_run(data_args, loss_args, training_args)
    run = start_run([model_args, data_args, loss_args, eval_args, training_args], training_args, argv)

    # 1. Model: a CrossEncoder scoring logit[yes] - logit[no] of the answer token after the reranker prompt. Seeded
    #    first: weights the checkpoint lacks (the language-model head of an embedding model) are initialised here
    set_seed(training_args.seed)
    model = build_reranker(model_args)
    logger.info("Reranker:\n%s", model)

    # 2. Dataset: (query, page, hard negatives) rows, pages resized once to the model's pixel budget (the losses
    #    preprocess in this process), shaped for the loss: pairs, lists or n-tuples
    train_rows, eval_rows = load_training_data(data_args, seed=training_args.seed)
    check_enough_rows(len(train_rows), training_args)
    query, positive, negatives = data_args.query_column, data_args.positive_column, data_args.negative_columns
    train_rows = presize_page_columns(model, train_rows, columns=[positive, *negatives], as_images=True)
    train_dataset = rows_for_loss(train_rows, loss_args.loss, query, positive, negatives)
    logger.info("Training rows (%s): %s", loss_args.loss, train_dataset)

    # 3. Loss: BinaryCrossEntropyLoss, LambdaLoss or CachedMultipleNegativesRankingLoss
    loss = build_reranker_loss(model, loss_args, num_negatives=len(negatives))

    # 4. Evaluator: NDCG@10 of reranking each query's positive + hard negatives, before, during and after training
    evaluator, base_scores = None, {}
    if eval_rows is not None:
        eval_set = build_eval_set(model, eval_rows, data_args)
        evaluator = build_rerank_evaluator(eval_set, eval_args.eval_name, eval_args.evaluator_batch_size)
        if eval_args.evaluate_base_model:
            base_scores = evaluate_reranker(evaluator, model)
            logger.info("Base reranker: %s", base_scores)

    # 5. Trainer (training arguments are CrossEncoderTrainingArguments, parsed as they are)
    trainer = CrossEncoderTrainer(
        model=model, args=training_args, train_dataset=train_dataset, loss=loss, evaluator=evaluator
    )
    train(trainer, run.resume_checkpoint, argv)

    # 6-7. On the main process only (the others wait): save the final model before anything else can fail, then the
    #      final evaluation and metrics.json
    metrics: dict = {}
    with main_process_only(training_args) as is_main:
        if is_main:
            final_dir = save_to_final_dir(model, training_args.output_dir)
            final_scores = evaluate_reranker(evaluator, model) if evaluator is not None else {}
            metrics = write_reranker_metrics(training_args.output_dir, eval_args.eval_name, base_scores, final_scores)
            print(metrics["summary"])

    # 8. (Optional) Push to the Hugging Face Hub, once, after the local save
    if is_main and run.push_requested:
        push_to_hub(model, final_dir, training_args, run.hub_token)
    return metrics


def cli(argv: list[str] | None = None) -> None:
    """The command line: parse, run, and turn a user's mistake into one message and an exit code."""
    argv = sys.argv if argv is None else argv
    run_cli(lambda: main(*make_parser().parse(argv[1:]), argv=argv))


if __name__ == "__main__":
    configure_logging()
    cli()
