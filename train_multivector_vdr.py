"""Finetune a late-interaction (multi-vector, ColPali-style) model for visual document retrieval.

The same base model and (query, page, hard negatives) rows as train_vdr.py, trained as Sentence Transformers'
MultiVectorEncoder: a 128-d vector per token, a query scored against a page with MaxSim. The steps follow the
library's own example (examples/multi_vector_encoder/training/multimodal/training_visual_document_retrieval.py):
model, dataset, loss, training arguments, evaluator, trainer, final evaluation, save, optional push.

Usage:
    # Offline quickstart on a CPU (tiny random Qwen3-VL, generated pages), under a minute:
    python train_multivector_vdr.py --config configs/quickstart-multivector.yaml

    # Qwen3-VL-Embedding-2B on the VDR data, the library example's settings (a GPU with bf16 and Hub access):
    python train_multivector_vdr.py --config configs/qwen3-vl-embedding-2b-vdr-multivector.yaml

Run `python train_multivector_vdr.py --help` for every argument, SentenceTransformerTrainingArguments included.
"""

from __future__ import annotations

import logging
import sys

from sentence_transformers import SentenceTransformerTrainingArguments
from sentence_transformers.multi_vector_encoder import MultiVectorEncoderModelCardData, MultiVectorEncoderTrainer
from transformers import set_seed

from vdr.cli import ConfigParser, configure_logging, run_cli
from vdr.data.page_images import presize_page_columns
from vdr.data.sources import load_training_data
from vdr.models.multi_vector import build_multi_vector_model
from vdr.provenance import write_run_config
from vdr.training.arguments import (
    CachedLossArguments,
    DataArguments,
    EvaluationArguments,
    MultiVectorModelArguments,
    check_run_arguments,
    multi_vector_training_arguments,
)
from vdr.training.distributed import main_process_only
from vdr.training.evaluators import (
    build_eval_set,
    build_multi_vector_evaluator,
    evaluate_multi_vector,
    format_dims_table,
)
from vdr.training.losses import build_multi_vector_loss
from vdr.training.run import (
    check_enough_rows,
    push_to_hub,
    resolved_settings,
    save_to_final_dir,
    set_training_prompts,
    start_run,
    train,
    write_metrics,
)

logger = logging.getLogger("train_multivector_vdr")


def make_parser() -> ConfigParser:
    return ConfigParser(
        (
            MultiVectorModelArguments,
            DataArguments,
            CachedLossArguments,
            EvaluationArguments,
            SentenceTransformerTrainingArguments,
        ),
        prog="train_multivector_vdr.py",
        description=__doc__.split("\n")[0],
    )


def main(
    model_args: MultiVectorModelArguments,
    data_args: DataArguments,
    loss_args: CachedLossArguments,
    eval_args: EvaluationArguments,
    training_args: SentenceTransformerTrainingArguments,
    argv: list[str] | None = None,
) -> dict:
    argv = argv or []
    # 0. Before anything loads: the arguments, the output folder and the checkpoint to resume from; the run's record
    check_run_arguments(data_args, training_args)
    run = start_run([model_args, data_args, loss_args, eval_args, training_args], training_args, argv)

    # 1. Model: the base with a new 128-d token projection, a scoring mask and token-level normalisation. Seeded
    #    first: the projection is randomly initialised, and the base model's score would vary from run to run.
    # 2. Dataset: the same (query, page, hard negatives) rows as the single-vector recipe. With several processes the
    #    main one loads first: downloads and caches are made once.
    set_seed(training_args.seed)
    card = MultiVectorEncoderModelCardData(model_name=training_args.run_name or None)
    with training_args.main_process_first(desc="loading the model and data"):
        model = build_multi_vector_model(model_args.model_name_or_path, model_args, card)
        logger.info("Model:\n%s", model)
        train_dataset, eval_rows = load_training_data(data_args, seed=training_args.seed)
    check_enough_rows(len(train_dataset), training_args)

    # 3. Loss: in-batch negatives scored with MaxSim, gradient-cached
    loss = build_multi_vector_loss(model, loss_args)

    # 4. Training arguments: the multi-vector trainer's class, the projection's learning rate, prompts per column
    set_training_prompts(training_args, model, data_args, eval_rows)
    args = multi_vector_training_arguments(training_args, model, model_args.projection_learning_rate)
    resolved = resolved_settings(model, args, run.resume_checkpoint)
    resolved["learning_rate_mapping"] = args.learning_rate_mapping
    write_run_config(training_args.output_dir, run.requested, argv, resolved)

    # 5. Evaluator: MaxSim retrieval on the held-out rows, of the base model (on the main process; the others
    #    wait), during and after training
    eval_set, evaluator, base_scores = None, None, {}
    if eval_rows is not None:
        eval_set = build_eval_set(model, eval_rows, data_args)
        evaluator = build_multi_vector_evaluator(eval_set.data, eval_args.eval_name, eval_args.evaluator_batch_size)
        if eval_args.evaluate_base_model:
            with main_process_only(training_args) as is_main:
                if is_main:
                    base_scores = evaluate_multi_vector(model, eval_set.data, eval_args.evaluator_batch_size)
                    logger.info("Base model:\n%s", format_dims_table({"base": base_scores}))

    # 6. Trainer. No eval_dataset, as in the library's example: the retrieval evaluator is the signal, and an eval
    #    loss would collate every page column of every eval row at each evaluation. Pages resized once, as train_vdr.py.
    if data_args.presize_pages:
        train_dataset = presize_page_columns(model, train_dataset)
    trainer = MultiVectorEncoderTrainer(
        model=model, args=args, train_dataset=train_dataset, loss=loss, evaluator=evaluator
    )
    train(trainer, run.resume_checkpoint, argv)

    # 7. On the main process only (the others wait): save the final model before anything else can fail, then the
    #    final evaluation and metrics.json (keyed by the token dimension)
    metrics: dict = {}
    with main_process_only(training_args) as is_main:
        if is_main:
            final_dir = save_to_final_dir(model, training_args.output_dir)
            final_scores = {}
            if eval_set is not None:
                final_scores = evaluate_multi_vector(model, eval_set.data, eval_args.evaluator_batch_size)
                table = format_dims_table({"base": base_scores, "final": final_scores})
                logger.info("Before and after training:\n%s", table)
            metrics = write_metrics(training_args.output_dir, eval_args.eval_name, base_scores, final_scores)
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
