"""Where a name points: a local path or a Hugging Face Hub id, and the Hub look-ups that only add
information (a model card, a config file, the commit a revision points to): offline, they quietly give nothing."""

from __future__ import annotations

from pathlib import Path


def looks_like_local_path(value: str) -> bool:
    """Whether a model or dataset reference is meant as a local path rather than a Hub id."""
    return (
        value.startswith((".", "/", "~"))
        or value.count("/") > 1
        or Path(value).suffix in (".parquet", ".jsonl", ".json")
    )


def hub_file(model_id: str, filename: str) -> Path | None:
    """One file of a Hub model (its card, its Sentence Transformers config), or None when it cannot be had:
    offline, no such file, not a Hub id. For what only adds information (a model's dims or kind), never required."""
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(model_id, filename))
    except Exception:
        return None


def hub_commit(model_id: str, revision: str | None) -> str:
    """The commit a Hub revision points to now, so an updated Hub model is not served stale embeddings."""
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(model_id, revision=revision).sha or (revision or "main")
    except Exception:  # offline, or a private model without a token: fall back to the revision's name
        return revision or "main"
