"""Compatibility: transformers 5.24's adapter support with peft 0.21."""

from __future__ import annotations

from packaging.version import Version


def accept_installed_peft() -> None:
    """Let transformers 5.24's adapter support run with peft 0.21.

    transformers 5.24 raised the PEFT version its adapter support requires from 0.20 to 0.22 without changing that
    code (5.23's and 5.24's ``integrations/peft.py`` differ in the version constant only), and peft 0.22 is not on
    every package index yet (this project's CI mirror stops at 0.21.2). For that exact pair the 5.23 floor is kept;
    any other combination is left to transformers' own check. Called before adding or loading an adapter.
    """
    try:
        import peft
        import transformers
        from transformers.integrations import peft as peft_integration
    except ImportError:
        return
    if (
        transformers.__version__.startswith("5.24.")
        and peft_integration.MIN_PEFT_VERSION == "0.22.0"
        and Version(peft.__version__) >= Version("0.21.0")
    ):
        peft_integration.MIN_PEFT_VERSION = "0.21.0"
