"""User-facing errors, the wrapper that turns them into a one-paragraph message and an exit code, and the scripts'
logging set-up."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Exit code for bad input (configuration, data, model path): the same code argparse uses.
USAGE_ERROR_EXIT_CODE = 2


class VdrError(Exception):
    """A problem with the user's input that they can fix: the message says what and how."""

    exit_code = USAGE_ERROR_EXIT_CODE


class PushFailed(VdrError):
    """The final model is saved locally, but pushing it to the Hub failed."""

    exit_code = 3


class Interrupted(VdrError):
    """The user pressed Ctrl-C; the message says what can be resumed."""

    exit_code = 130  # 128 + SIGINT, what shells report for Ctrl-C


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's ``main`` and exit with a short message, not a traceback, on a ``VdrError``.

    Exit codes: 2 for bad input, 3 when only the Hub push failed, 130 for Ctrl-C. Anything else is a bug (or an
    infrastructure failure) and keeps its full traceback.
    """
    try:
        main()
    except VdrError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C).", file=sys.stderr)
        sys.exit(Interrupted.exit_code)


def configure_logging() -> None:
    """The scripts' log format: time, logger, message; the Hub client's per-request lines kept quiet."""
    logging.basicConfig(format="%(asctime)s - %(name)s - %(message)s", datefmt="%H:%M:%S", level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
