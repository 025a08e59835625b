"""The scripts' command line: typed dataclasses, a YAML file via ``--config``, command-line overrides, and a user's
mistake turned into one paragraph and an exit code.

Precedence is dataclass default < YAML file < command line. The YAML values become argparse defaults, so
they go through the same type conversion as command-line values (PyYAML reads ``2e-5`` as a string).
Unknown keys, in the YAML file or on the command line, fail before anything is loaded, naming the key and
the closest valid one. Sentence Transformers' training arguments are used as they are."""

from __future__ import annotations

import argparse
import difflib
import logging
import re
import signal
import sys
import typing
import warnings
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from vdr.errors import Interrupted, VdrError, not_utf8

#: Keys the scripts once read and now refuse, with what to do instead.
RETIRED_KEYS = {
    "model_type": "multi-vector (late-interaction) training has its own script. For 'model_type: multi_vector' "
    "run `python train_multivector_vdr.py --config <your config>`; train_vdr.py trains single-vector models. "
    "Delete the model_type line.",
}


class ConfigParser(HfArgumentParser):
    """``HfArgumentParser`` with ``--config file.yaml`` plus overrides, strict about unknown keys."""

    def __init__(self, dataclass_types: Sequence[type], prog: str | None = None, description: str | None = None):
        super().__init__(
            dataclass_types,
            prog=prog,
            description=description,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            allow_abbrev=False,  # a prefix such as --max_pixel must not silently mean --max_pixels
        )
        self.add_argument("--config", default=None, help="YAML file of arguments; command-line flags override it.")

    def error(self, message: str) -> None:
        # argparse's default prints the whole usage (hundreds of training flags) before the message.
        raise VdrError(f"{message}. Run with --help to list the valid arguments.")

    def valid_keys(self) -> list[str]:
        return [action.dest for action in self._actions if action.dest not in ("help", "config")]

    def unknown_key_error(self, key: str, where: str) -> VdrError:
        if key in RETIRED_KEYS:
            return VdrError(f"'{key}' in {where} is no longer an argument: {RETIRED_KEYS[key]}")
        close = difflib.get_close_matches(key, self.valid_keys(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else " Run with --help to list the valid arguments."
        return VdrError(f"Unknown argument '{key}' in {where}.{hint}")

    def parse(self, argv: Sequence[str] | None = None) -> tuple[Any, ...]:
        argv = list(sys.argv[1:] if argv is None else argv)
        config_path = _config_path(argv)
        if config_path is not None:
            self._apply_yaml_defaults(config_path)
        namespace, remaining = self.parse_known_args(argv)
        if remaining:
            flag = next((arg for arg in remaining if arg.startswith("-")), remaining[0])
            raise self.unknown_key_error(flag.lstrip("-").split("=")[0], "the command line")
        return self._namespace_to_dataclasses(namespace)

    def _apply_yaml_defaults(self, path: Path) -> None:
        values = load_yaml(path)
        valid = set(self.valid_keys())
        for key in values:
            if key not in valid:
                raise self.unknown_key_error(key, str(path))
        hints = self._type_hints()
        for action in self._actions:
            if action.dest not in values:
                continue
            action.required = False
            values[action.dest] = _yaml_value(action, hints.get(action.dest), values[action.dest], path)
        self.set_defaults(**values)

    def _type_hints(self) -> dict[str, Any]:
        hints: dict[str, Any] = {}
        for dtype in self.dataclass_types:
            hints.update(typing.get_type_hints(dtype))
        return hints

    def _namespace_to_dataclasses(self, namespace: argparse.Namespace) -> tuple[Any, ...]:
        values = vars(namespace)
        values.pop("config", None)
        outputs = []
        for dtype in self.dataclass_types:
            names = {f.name for f in fields(dtype) if f.init}
            kwargs = {name: values[name] for name in names if name in values}
            try:
                outputs.append(dtype(**kwargs))
            except (ValueError, TypeError) as error:
                raise VdrError(f"Invalid {dtype.__name__}: {error}") from None
        return tuple(outputs)


def _yaml_value(action: argparse.Action, hint: Any, value: Any, path: Path) -> Any:
    """Check a YAML value against its field's type, the way argparse would check the same value given as a flag.

    PyYAML types values itself (``null``, lists, numbers): a value of the wrong kind is named with its file and
    key here, rather than failing later inside a library.
    """
    allowed = _hint_types(hint)
    where = f"Config file '{path}', key '{action.dest}'"
    if value is None:
        if type(None) in allowed:
            return None
        raise VdrError(f"{where}: null is not allowed; give a value or remove the key to use the default.")
    is_list_field = action.nargs in ("+", "*")
    if isinstance(value, dict) and dict not in allowed:
        raise VdrError(f"{where}: expected a single value, got a mapping {value!r}.")
    if isinstance(value, list):
        if not is_list_field and list not in allowed:
            raise VdrError(f"{where}: expected a single value, got the list {value!r}.")
        return [_convert(action, item, where) for item in value]
    if is_list_field:
        return [_convert(action, value, where)]  # "negative_columns: negative_0" means one column
    return _convert(action, value, where)


def _hint_types(hint: Any) -> set[Any]:
    """The plain types a field's annotation admits (``int | None`` -> {int, NoneType})."""
    if hint is None:
        return {object}
    return {typing.get_origin(arg) or arg for arg in (typing.get_args(hint) or (hint,))}


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    """Convert a YAML scalar with the flag's own type function, as argparse converts command-line strings."""
    if action.type is None or isinstance(value, dict):
        return value
    if isinstance(value, bool) and action.type in (int, float):
        raise VdrError(f"{where}: expected a number, got {value!r}.")
    if isinstance(value, float) and action.type is int and not value.is_integer():
        raise VdrError(f"{where}: expected a whole number, got {value!r}.")
    try:
        return action.type(value if isinstance(value, str) else str(value) if action.type is not int else value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as error:
        raise VdrError(f"{where}: {value!r} is not valid ({error}).") from None


def _config_path(argv: list[str]) -> Path | None:
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            return Path(argv[index + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    return None


def create_folder(value: str, what: str, flag: str = "--output_dir") -> Path:
    """Create a folder a script writes to (its ``--output_dir``, a cache) now, so that a path that cannot hold
    ``what`` fails before anything loads (a path under a file, a read-only or missing place), with one message."""
    folder = Path(value).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # an existing file, a file among its parents, no permission, a read-only file system
        reason = "is an existing file" if folder.is_file() else f"cannot be created ({error.strerror})"
        raise VdrError(f"{flag} '{value}' {reason}. Give a folder path for {what}.") from None
    return folder


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a flat YAML mapping of argument names to values, with a clear error for a bad file."""
    path = Path(path)
    if path.is_dir():
        raise VdrError(f"Config file '{path}' is a folder. Pass a YAML file to --config, e.g. configs/quickstart.yaml.")
    if not path.is_file():
        raise VdrError(f"Config file '{path}' does not exist. Pass an existing YAML file to --config.")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except UnicodeDecodeError as error:
        raise not_utf8(f"Config file '{path}'", error) from None
    except yaml.YAMLError as error:
        raise VdrError(f"Config file '{path}' is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise VdrError(f"Config file '{path}' must be a mapping of argument names to values.")
    return values


class RepeatableFlag(argparse._ExtendAction):
    """A repeatable list flag (``--model a --model b``) whose first use on the command line replaces the value
    from the YAML file instead of adding to it (argparse's ``extend`` appends to its default)."""

    def __call__(self, parser, namespace, values, option_string=None):
        given = namespace.__dict__.setdefault("_repeatable_flags_given", set())
        if self.dest not in given:
            given.add(self.dest)
            setattr(namespace, self.dest, [])
        super().__call__(parser, namespace, values, option_string)


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's ``main`` and exit with a short message, not a traceback, on a ``VdrError``.

    Exit codes: 2 for bad input, 3 when only the Hub push failed, 130 for Ctrl-C or SIGTERM (what a job scheduler
    sends to preempt a run: it stops as cleanly as Ctrl-C, checkpoints kept and the resume command printed). Anything
    else is a bug (or an infrastructure failure) and keeps its full traceback.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        main()
    except VdrError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C or SIGTERM).", file=sys.stderr)
        sys.exit(Interrupted.exit_code)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def configure_logging() -> None:
    """The scripts' log format (time, logger, message), with three kinds of noise kept out: the Hub client's
    per-request lines, transformers' warning on every processor call when ``min_pixels`` / ``max_pixels`` were given
    at load time (the recipe's processor_kwargs: the values still take effect), and its load report when its only
    finding is the language-model head an embedding model leaves unused (``UnusedLmHeadReportFilter``)."""
    logging.basicConfig(format="%(asctime)s - %(name)s - %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Passing `min_pixels` and `max_pixels` to a processor call is deprecated")
    logging.getLogger("transformers.modeling_utils").addFilter(UnusedLmHeadReportFilter())


class UnusedLmHeadReportFilter(logging.Filter):
    """Drops transformers' load report when its only finding is the checkpoint's ``lm_head.weight`` left unused: an
    embedding model loads the Qwen3-VL backbone without its language-model head, as intended. A report with any
    other finding (a missing or mismatched weight) still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        rows = re.findall(r"^(\S+)\s*\|\s*(?:\x1b\[[\d;]*m)*([A-Z]+)", message, flags=re.MULTILINE)
        return {(key, status) for key, status in rows if key != "Key"} != {("lm_head.weight", "UNEXPECTED")}
