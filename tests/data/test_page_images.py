"""Pages resized once to the model's pixel budget: the model sees the same pixels and the training the same losses,
batches stay free of duplicates, the cache is keyed by content and processor settings, and nothing is decoded
before the collator."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from datasets import Dataset, Image
from PIL import Image as PILImage
from PIL import ImageFile
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.sampler import NoDuplicatesBatchSampler

from vdr.data.page_images import image_columns, page_cache_folder, presize_page_columns
from vdr.models.embedder import build_model
from vdr.models.loading import ModelLoadingArguments
from vdr.training.arguments import LossArguments
from vdr.training.losses import build_loss

MAX_PIXELS = 128 * 128  # small pages keep the test fast; the pages below are all larger, so all are resized


# Pages of different sizes, orientations and formats in one batch (and in one processor call).
PAGE_SIZES = [(1240, 1754), (700, 990), (990, 700), (256, 362), (512, 512), (333, 777)]


def save_page(page: PILImage.Image, path: Path, size: tuple[int, int]) -> str:
    page = page.resize(size, PILImage.BICUBIC)
    if path.suffix == ".jpg":
        page.save(path, quality=90)
    else:
        page.save(path)
    return str(path)


@pytest.fixture(scope="module")
def page_rows(tmp_path_factory, generated_rows) -> Dataset:
    """Rows of (query, page, hard negative) whose pages are PNG and JPEG files of different sizes, one of them
    transparent, loaded as datasets.Image columns as train_vdr.py loads them."""
    folder = tmp_path_factory.mktemp("pages")
    rows = generated_rows[: len(PAGE_SIZES)]
    columns: dict[str, list[str]] = {"query": [row["query"] for row in rows], "image": [], "negative_0": []}
    for i, (row, size) in enumerate(zip(rows, PAGE_SIZES)):
        suffix = ".jpg" if i % 2 else ".png"
        columns["image"].append(save_page(row["image"], folder / f"{i}-pos{suffix}", size))
        negative = row["negative_0"].convert("RGBA") if i == 0 else row["negative_0"]
        if i == 0:  # a transparent page: the processor composites it onto white
            negative.putalpha(PILImage.linear_gradient("L").resize(negative.size))
        columns["negative_0"].append(save_page(negative, folder / f"{i}-neg.png", size[::-1]))
    dataset = Dataset.from_dict(columns)
    return dataset.cast_column("image", Image()).cast_column("negative_0", Image())


@pytest.fixture(scope="module")
def model(vdr_cache):
    return build_model("generated:tiny-qwen3-vl", ModelLoadingArguments(max_pixels=MAX_PIXELS))


@contextmanager
def counting_decodes() -> Iterator[list[int]]:
    """Count PIL image decodes (a datasets.Image access or a PIL page being read) while the block runs."""
    count, original = [0], ImageFile.ImageFile.load

    def load(image, *args, **kwargs):
        count[0] += bool(getattr(image, "tile", None))  # pixels not read yet: this call decodes
        return original(image, *args, **kwargs)

    ImageFile.ImageFile.load = load
    try:
        yield count
    finally:
        ImageFile.ImageFile.load = original


def test_presized_pages_give_bit_identical_processor_outputs(model, page_rows, tmp_path):
    fast = presize_page_columns(model, page_rows, tmp_path)
    assert fast.column_names == page_rows.column_names and image_columns(fast) == []  # same order, now paths
    for column in ("image", "negative_0"):
        originals = list(page_rows[column])  # decoded full pages, as the plain data path gives the collator
        paths = fast[column]
        assert all(PILImage.open(p).size != o.size for p, o in zip(paths, originals))  # really resized
        plain, presized = model.preprocess(originals), model.preprocess(paths)
        assert plain.keys() == presized.keys()
        for key, value in plain.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, presized[key]), (column, key)


def test_pages_are_cached_by_content_and_processor_settings(model, page_rows, tmp_path):
    first = presize_page_columns(model, page_rows, tmp_path)
    files = sorted(Path(first["image"][0]).parent.iterdir())
    stamps = [f.stat().st_mtime_ns for f in files]
    assert len(files) == 2 * len(page_rows)  # one file per distinct page

    with counting_decodes() as decodes:
        second = presize_page_columns(model, page_rows, tmp_path)
    assert decodes[0] == 0  # the second run reuses every page: nothing decoded, nothing written
    assert second["image"] == first["image"] and [f.stat().st_mtime_ns for f in files] == stamps

    twice = Dataset.from_dict({"image": [page_rows[0]["image"]] * 2}).cast_column("image", Image())
    paths = presize_page_columns(model, twice, tmp_path)["image"]
    assert paths[0] == paths[1]  # the same page twice: one file

    other_budget = build_model("generated:tiny-qwen3-vl", ModelLoadingArguments(max_pixels=64 * 64))
    other = presize_page_columns(other_budget, page_rows, tmp_path)
    assert Path(other["image"][0]).parent != Path(first["image"][0]).parent
    assert PILImage.open(other["image"][0]).size != PILImage.open(first["image"][0]).size


def test_cache_folder_key_changes_with_every_processor_setting():
    key = ("Qwen2VLImageProcessor", 784, 360000, 32, "3")
    variants = [key[:2] + (802816,) + key[3:], key[:1] + (3136,) + key[2:], key[:3] + (28,) + key[4:]]
    assert len({page_cache_folder(k, "/c") for k in [key, *variants]}) == 4


def duplicated_rows(page_rows: Dataset, tmp_path: Path) -> Dataset:
    """Rows that share pages: the same file in several rows, and the same bytes under another file name."""
    paths = [item["path"] for item in page_rows.cast_column("image", Image(decode=False))["image"]]
    copy = tmp_path / "copy-of-0.png"
    copy.write_bytes(Path(paths[0]).read_bytes())
    images = paths + [paths[0], str(copy), paths[1], paths[2]]
    negatives = [paths[(i + 3) % len(paths)] for i in range(len(images))]
    queries = [f"query {i}" for i in range(len(images))]
    dataset = Dataset.from_dict({"query": queries, "image": images, "negative_0": negatives})
    return dataset.cast_column("image", Image()).cast_column("negative_0", Image())


def content(path_or_image) -> str:
    return hashlib.sha256(Path(path_or_image).read_bytes()).hexdigest()


def test_no_duplicates_sampler_keeps_batches_free_of_duplicate_pages_without_decoding(model, page_rows, tmp_path):
    fast = presize_page_columns(model, duplicated_rows(page_rows, tmp_path), tmp_path / "cache")
    for seed in range(5):
        sampler = NoDuplicatesBatchSampler(fast, 4, drop_last=False, generator=torch.Generator(), seed=seed)
        with counting_decodes() as decodes:
            batches = list(sampler)
        assert decodes[0] == 0  # the sampler hashed path strings, not pixels
        assert sorted(i for batch in batches for i in batch) == list(range(len(fast)))
        for batch in batches:
            pages = [content(fast[i][column]) for i in batch for column in ("image", "negative_0")]
            assert len(pages) == len(set(pages)), (seed, batch)


def test_model_card_statistics_decode_no_presized_page(model, page_rows, tmp_path):
    fast = presize_page_columns(model, page_rows, tmp_path)
    loss = build_loss(model, LossArguments(matryoshka_dims=[64, 32], mini_batch_size=2))
    with counting_decodes() as decodes:
        model.model_card_data.compute_dataset_metrics(fast, {}, loss)
        model.model_card_data.set_widget_examples(fast)
    assert decodes[0] == 0
    with counting_decodes() as decodes:  # the plain data path, for contrast: every page of 100 rows at least
        model.model_card_data.compute_dataset_metrics(page_rows, {}, loss)
    assert decodes[0] >= 2 * len(page_rows)


def train_losses(tiny_model_dir: Path, dataset: Dataset, output_dir: Path) -> list[float]:
    model = build_model(str(tiny_model_dir), ModelLoadingArguments(max_pixels=MAX_PIXELS))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=3,  # different page sizes in every batch
        num_train_epochs=2,
        learning_rate=5e-3,
        batch_sampler="no_duplicates",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=7,
        use_cpu=True,
        dataloader_pin_memory=False,
    )
    loss = build_loss(model, LossArguments(matryoshka_dims=[64, 32], mini_batch_size=2))
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    trainer.train()
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_same_seed_gives_the_same_losses_with_the_fast_and_the_plain_data_path(
    model, page_rows, tiny_model_dir, tmp_path
):
    fast = presize_page_columns(model, page_rows, tmp_path / "cache")
    plain_losses = train_losses(tiny_model_dir, page_rows, tmp_path / "plain")
    fast_losses = train_losses(tiny_model_dir, fast, tmp_path / "fast")
    assert len(plain_losses) == 4  # 2 epochs x 2 batches of 3 rows
    assert plain_losses[-1] != plain_losses[0]  # the model did train
    assert fast_losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-6)
