"""Finetune a multimodal embedding model for visual document retrieval (text query -> page image).

The steps follow the Sentence Transformers multimodal training write-up: model, dataset, loss, training
arguments, evaluator, trainer, final per-dimension evaluation, save, optional push.

Usage:
    # Offline quickstart on a CPU (tiny random Qwen3-VL, generated pages), about a minute:
    python train_vdr.py --config configs/quickstart.yaml

    # The reference recipe (Qwen3-VL-Embedding-2B on VDR data; a GPU with bf16 and Hub access):
    python train_vdr.py --config configs/qwen3-vl-embedding-2b-vdr.yaml

    # Any argument can be overridden on the command line:
    python train_vdr.py --config configs/qwen3-vl-embedding-2b-vdr.yaml --learning_rate 1e-5 --max_pixels 802816

    # Multi-GPU (data parallel, negatives shared across devices; see docs/training.md):
    torchrun --nproc_per_node 4 train_vdr.py --config configs/qwen3-vl-embedding-2b-vdr.yaml \\
        --per_device_train_batch_size 16 --gather_across_devices true

    # LoRA on a 24 GB card:
    python train_vdr.py --config configs/qwen3-vl-embedding-8b-vdr-lora.yaml

Late-interaction (multi-vector) models train with train_multivector_vdr.py, rerankers with train_reranker_vdr.py.
Run `python train_vdr.py --help` for every argument, SentenceTransformerTrainingArguments included.
"""

from __future__ import annotations

import logging
import sys
from functools import partial

from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData

from vdr.cli import ConfigParser, configure_logging, run_cli
from vdr.data.page_images import presize_page_columns
from vdr.data.sources import load_training_data
from vdr.models.embedder import build_model, check_truncate_dim
from vdr.provenance import write_run_config
from vdr.training.arguments import (
    DataArguments,
    EvaluationArguments,
    LoraArguments,
    LossArguments,
    ModelArguments,
    check_training_run,
)
from vdr.training.distributed import main_process_only, whole_trained_model
from vdr.training.evaluators import build_eval_set, build_ir_evaluator, evaluate_dims, format_dims_table
from vdr.training.lora import add_lora_adapter, save_final
from vdr.training.losses import build_loss
from vdr.training.run import (
    check_enough_rows,
    push_to_hub,
    resolved_settings,
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


def build_trainable_model(
    model_args: ModelArguments, lora_args: LoraArguments, card: SentenceTransformerModelCardData
) -> SentenceTransformer:
    """A Sentence Transformers checkpoint as it is, or a VLM with last-token pooling + normalisation; with
    ``--lora true``, frozen, with trainable LoRA adapters."""
    model = build_model(model_args.model_name_or_path, model_args, card)
    if lora_args.lora:
        add_lora_adapter(model, lora_args, model_args)
    return model


def main(
    model_args: ModelArguments,
    data_args: DataArguments,
    loss_args: LossArguments,
    eval_args: EvaluationArguments,
    training_args: SentenceTransformerTrainingArguments,
    lora_args: LoraArguments | None = None,
    argv: list[str] | None = None,
) -> dict:
    lora_args, argv = lora_args or LoraArguments(), argv or []
    # 0. Before anything loads: the arguments, the output folder and the checkpoint to resume from; the run's record
    check_training_run(model_args, data_args, loss_args, training_args)
    run = start_run([model_args, data_args, loss_args, eval_args, training_args, lora_args], training_args, argv)

    # 1. Dataset: (query, page, hard negatives) rows; evaluation rows hold every negative column. Loaded (and checked)
    #    before the model, so a data mistake fails before a model of several GB loads.
    # 2. Model, with LoRA adapters if asked. With several processes the main one loads first: a Hub download, the
    #    tiny model and generated pages are made once, into the caches the others then read.
    card = SentenceTransformerModelCardData(model_name=training_args.run_name or None)
    with training_args.main_process_first(desc="loading the data and model"):
        train_dataset, eval_rows = load_training_data(data_args, seed=training_args.seed)
        check_enough_rows(len(train_dataset), training_args)
        logger.info("Training rows: %s", train_dataset)
        model = build_trainable_model(model_args, lora_args, card)
        check_truncate_dim(model, model_args.truncate_dim)
        logger.info("Model:\n%s", model)

    # 3. Loss: MatryoshkaLoss over CachedMultipleNegativesRankingLoss
    loss = build_loss(model, loss_args)

    # 4. Training arguments: parsed as they are; prompts (if any) come from the model's own, for every column
    set_training_prompts(training_args, model, data_args, eval_rows)
    resolved = resolved_settings(model, training_args, run.resume_checkpoint)
    write_run_config(training_args.output_dir, run.requested, argv, resolved)

    # 5. Evaluator: NDCG@10 on the held-out rows, of the base model (on the main process; the others wait), during
    #    training, and at every Matryoshka dim at the end
    eval_set, evaluator, base_scores = None, None, {}
    if eval_rows is not None:
        eval_set = build_eval_set(model, eval_rows, data_args)
        evaluator = build_ir_evaluator(eval_set.data, eval_args.eval_name, eval_args.evaluator_batch_size)
        logger.info("Evaluation: %d queries, %d pages", len(eval_set.data.queries), len(eval_set.data.corpus))
        if eval_args.evaluate_base_model:
            with main_process_only(training_args) as is_main:
                if is_main:
                    base_scores = evaluate_dims(
                        model, eval_set.data, loss_args.matryoshka_dims, eval_args.evaluator_batch_size
                    )
                    logger.info("Base model:\n%s", format_dims_table({"base": base_scores}))

    # 6. Trainer, on pages resized once to the model's pixel budget (cached on disk; bit-identical pixel values)
    eval_loss_rows = eval_set.loss_rows if eval_set is not None else None
    if data_args.presize_pages:
        train_dataset = presize_page_columns(model, train_dataset)
        if eval_loss_rows is not None:
            eval_loss_rows = presize_page_columns(model, eval_loss_rows)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_loss_rows,
        loss=loss,
        evaluator=evaluator,
    )
    train(trainer, run.resume_checkpoint, argv)

    # 7. The trained model, whole, on the main process (FSDP's shards are gathered into a fresh copy)
    trained = whole_trained_model(trainer, model, partial(build_trainable_model, model_args, lora_args, card))

    # 8. On the main process only (the others wait): save the final model (with its default truncate_dim, a LoRA
    #    adapter merged unless --lora_merge false) before anything else can fail, then evaluate it at every
    #    Matryoshka dimension from one encoding of the corpus, and write metrics.json
    metrics: dict = {}
    with main_process_only(training_args) as is_main:
        if is_main:
            final_dir = save_final(
                trained,
                training_args.output_dir,
                model_args.truncate_dim,
                loss_args.matryoshka_dims,
                lora_args,
                model_args,
            )
            final_scores = {}
            if eval_set is not None:
                final_scores = evaluate_dims(
                    trained, eval_set.data, loss_args.matryoshka_dims, eval_args.evaluator_batch_size
                )
                table = format_dims_table({"base": base_scores, "final": final_scores})
                logger.info("Before and after training:\n%s", table)
            metrics = write_metrics(training_args.output_dir, eval_args.eval_name, base_scores, final_scores)
            print(metrics["summary"])

    # 9. (Optional) Push to the Hugging Face Hub, once, after the local save; a failure keeps the local copy and
    #    says how to retry
    if is_main and run.push_requested:
        push_to_hub(trained, final_dir, training_args, run.hub_token)
    return metrics


def cli(argv: list[str] | None = None) -> None:
    """The command line: parse, run, and turn a user's mistake into one message and an exit code."""
    argv = sys.argv if argv is None else argv
    run_cli(lambda: main(*make_parser().parse(argv[1:]), argv=argv))


if __name__ == "__main__":
    configure_logging()
    cli()
