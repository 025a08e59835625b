"""Finetune a multimodal embedding model for visual document retrieval (text query -> page image).

The steps follow the Sentence Transformers multimodal training write-up: model, dataset, loss, training
arguments, evaluator, trainer, final per-dimension evaluation, save, optional push.

Usage:
    # Offline quickstart on a CPU (tiny random Qwen3-VL, generated pages), about two minutes:
    python train_vdr.py --config configs/quickstart.yaml

    # The reference recipe (Qwen3-VL-Embedding-2B on VDR data; a GPU with bf16 and Hub access):
    python train_vdr.py --config configs/qwen3-vl-embedding-2b-vdr.yaml

    # Any argument can be overridden on the command line:
    python train_vdr.py --config configs/qwen3-vl-embedding-2b-vdr.yaml --learning_rate 1e-5 --max_pixels 802816

    # Multi-GPU (data parallel, negatives shared across devices; see the README's "Scaling up"):
    torchrun --nproc_per_node 4 train_vdr.py --config configs/qwen3-vl-embedding-2b-vdr.yaml \
        --per_device_train_batch_size 16 --gather_across_devices true

    # LoRA on a 24 GB card:
    python train_vdr.py --config configs/qwen3-vl-embedding-8b-vdr-lora.yaml

    # Late interaction (ColPali-style multi-vector), offline quickstart and the reference setting:
    python train_vdr.py --config configs/quickstart-multivector.yaml
    python train_vdr.py --config configs/qwen3-vl-embedding-2b-vdr-multivector.yaml

Run `python train_vdr.py --help` for every argument, SentenceTransformerTrainingArguments included.
"""

from __future__ import annotations

import logging
import sys
from functools import partial

from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData

from vdr.config import (
    ConfigParser,
    DataArguments,
    EvaluationArguments,
    LossArguments,
    ModelArguments,
    check_training_run,
)
from vdr.data import load_training_data
from vdr.distributed import whole_trained_model
from vdr.errors import configure_logging, run_cli
from vdr.evaluation import build_training_evaluation, evaluate_dims, format_dims_table
from vdr.lora import LoraArguments, add_lora_adapter, save_final
from vdr.loss import build_loss
from vdr.model import build_model, check_truncate_dim
from vdr.multi_vector_training import train_multi_vector
from vdr.provenance import write_run_config
from vdr.train_pages import presize_page_columns
from vdr.training import (
    check_enough_rows,
    finish_run,
    resolved_settings,
    score_base_model,
    set_training_prompts,
    start_run,
    train,
    write_metrics,
)

logger = logging.getLogger("train_vdr")


def make_parser() -> ConfigParser:
    return ConfigParser(
        (
            ModelArguments,
            DataArguments,
            LossArguments,
            EvaluationArguments,
            SentenceTransformerTrainingArguments,
            LoraArguments,  # last, so the first five groups keep their places
        ),
        prog="train_vdr.py",
        description=__doc__.split("\n")[0],
    )


def main(
    model_args: ModelArguments,
    data_args: DataArguments,
    loss_args: LossArguments,
    eval_args: EvaluationArguments,
    training_args: SentenceTransformerTrainingArguments,
    lora_args: LoraArguments | None = None,
    argv: list[str] | None = None,
) -> dict:
    if model_args.model_type == "multi_vector":  # late interaction: its own model, loss, evaluator and trainer
        return train_multi_vector(model_args, data_args, loss_args, eval_args, training_args, lora_args, argv or [])
    lora_args = lora_args or LoraArguments()
    # 0. Before anything loads: the arguments, the output folder and the checkpoint to resume from; the run's record
    check_training_run(model_args, data_args, loss_args, training_args)
    run = start_run([model_args, data_args, loss_args, eval_args, training_args, lora_args], training_args, argv or [])

    # 1. Dataset: (query, page, hard negatives) rows; evaluation rows hold every negative column. Loaded (and
    # checked) before the model, so a data mistake fails before a model of several GB loads.
    # 2. Model: a Sentence Transformers checkpoint as it is, or a VLM with last-token pooling + normalisation;
    # with --lora true, frozen, with trainable LoRA adapters
    def build_trainable_model():
        built = build_model(model_args, SentenceTransformerModelCardData(model_name=training_args.run_name or None))
        if lora_args.lora:
            add_lora_adapter(built, lora_args, model_args)
        return built

    # With several processes the main one loads first: a Hub download, the tiny model and generated pages are made
    # once, into the caches the others then read.
    with training_args.main_process_first(desc="loading the data and model"):
        train_dataset, eval_rows = load_training_data(data_args, seed=training_args.seed)
        check_enough_rows(len(train_dataset), training_args)
        logger.info("Training rows: %s", train_dataset)
        model = build_trainable_model()
        check_truncate_dim(model, model_args.truncate_dim)
        logger.info("Model:\n%s", model)

    # 3. Loss: MatryoshkaLoss over CachedMultipleNegativesRankingLoss
    loss = build_loss(model, loss_args)

    # 4. Training arguments: parsed as they are; prompts (if any) come from the model's own, for every column
    set_training_prompts(training_args, model, data_args, eval_rows)
    resolved = resolved_settings(model, training_args, run.resume_checkpoint)
    write_run_config(training_args.output_dir, run.requested, argv or [], resolved)

    # 5. Evaluator: NDCG@10 of the base model, during training, and at every Matryoshka dim at the end
    evaluation = None
    base_scores: dict = {}
    if eval_rows is not None:
        evaluation = build_training_evaluation(
            model, eval_rows, data_args, eval_args.eval_name, eval_args.evaluator_batch_size
        )
        logger.info("Evaluation: %d queries, %d pages", len(evaluation.data.queries), len(evaluation.data.corpus))
        if eval_args.evaluate_base_model:  # on the main process; the others wait
            score_base = partial(
                evaluate_dims, model, evaluation.data, loss_args.matryoshka_dims, eval_args.evaluator_batch_size
            )
            base_scores = score_base_model(training_args, score_base)

    # 6. Trainer, on pages resized once to the model's pixel budget (cached on disk; bit-identical pixel values)
    if data_args.presize_pages:
        train_dataset = presize_page_columns(model, train_dataset)
        if evaluation is not None:
            evaluation.loss_dataset = presize_page_columns(model, evaluation.loss_dataset)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=evaluation.loss_dataset if evaluation else None,
        loss=loss,
        evaluator=evaluation.evaluator if evaluation else None,
    )
    train(trainer, run.resume_checkpoint, argv or [])

    # 7-8. On the main process only (the others wait): save the final model (with its default truncate_dim, a LoRA
    # adapter merged unless --lora_merge false) before anything else can fail, then evaluate it at every Matryoshka
    # dimension from one encoding of the corpus, and write metrics.json
    trained = whole_trained_model(trainer, model, build_trainable_model)

    def save_and_evaluate() -> tuple:
        final_dir = save_final(
            trained, training_args.output_dir, model_args.truncate_dim, loss_args.matryoshka_dims, lora_args, model_args
        )
        final_scores: dict = {}
        if evaluation is not None:
            dims, batch_size = loss_args.matryoshka_dims, eval_args.evaluator_batch_size
            final_scores = evaluate_dims(trained, evaluation.data, dims, batch_size)
            table = format_dims_table({"base": base_scores, "final": final_scores})
            logger.info("Before and after training:\n%s", table)
        return final_dir, write_metrics(training_args.output_dir, eval_args.eval_name, base_scores, final_scores)

    # 9. (Optional) Push to the Hugging Face Hub, once, after the local save
    return finish_run(training_args, run, save_and_evaluate, trained)


def cli(argv: list[str] | None = None) -> None:
    """The command line: parse, run, and turn a user's mistake into one message and an exit code."""
    argv = sys.argv if argv is None else argv
    run_cli(lambda: main(*make_parser().parse(argv[1:]), argv=argv))


if __name__ == "__main__":
    configure_logging()
    cli()
