"""Provenance: what a run was asked to do, what it resolved that to, and with which library versions.

Secrets never reach these records: a Hub token on the command line or in the arguments is replaced by
``<redacted>``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

RUN_CONFIG_FILE = "run_config.json"
REDACTED = "<redacted>"
#: Arguments whose values are secrets.
SECRET_ARGUMENTS = ("hub_token",)


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that compute embeddings (recorded in results and run configs)."""
    import datasets
    import sentence_transformers
    import torch
    import transformers

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "datasets": datasets.__version__,
    }


def redact_command(argv: Sequence[str]) -> list[str]:
    """The command line with the value of every secret flag (``--hub_token X`` or ``--hub_token=X``) hidden."""
    flags = tuple(f"--{name}" for name in SECRET_ARGUMENTS)
    redacted, hide_next = [], False
    for arg in argv:
        if hide_next:
            redacted.append(REDACTED)
            hide_next = False
        elif arg in flags:
            redacted.append(arg)
            hide_next = True
        elif arg.startswith(tuple(f"{flag}=" for flag in flags)):
            redacted.append(f"{arg.split('=', 1)[0]}={REDACTED}")
        else:
            redacted.append(arg)
    return redacted


def arguments_as_dict(arguments: Any) -> dict[str, Any]:
    """An argument dataclass as a JSON-ready dict, secrets redacted."""
    values = arguments.to_dict() if hasattr(arguments, "to_dict") else asdict(arguments)
    for name in SECRET_ARGUMENTS:
        if values.get(name) is not None:
            values[name] = REDACTED
    return values


def snapshot_arguments(groups: Sequence[Any]) -> dict[str, dict[str, Any]]:
    """Every argument group as requested, keyed by its class name, taken before the run changes any of them."""
    return {type(group).__name__: arguments_as_dict(group) for group in groups}


def write_run_config(
    output_dir: str | Path,
    requested: dict[str, dict[str, Any]],
    argv: Sequence[str],
    resolved: dict[str, Any] | None = None,
) -> Path:
    """Write ``output_dir/run_config.json``: the command, every argument as requested (``snapshot_arguments``),
    what the run resolved them to (prompts per column, ...) and the library versions."""
    record: dict[str, Any] = {"command": redact_command(argv), **requested, "resolved": resolved or {}}
    record["versions"] = library_versions()
    path = Path(output_dir) / RUN_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str))
    return path
