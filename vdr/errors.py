"""User-facing errors and the wrapper that turns them into a one-paragraph message and an exit code."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

logger = logging.getLogger(__name__)

#: Exit code for bad input (configuration, data, model path): the same code argparse uses.
USAGE_ERROR_EXIT_CODE = 2


class VdrError(Exception):
    """A problem with the user's input that they can fix: the message says what and how."""


def run_cli(main: Callable[[], object]) -> None:
    """Run a script's ``main`` and exit with a short message, not a traceback, on a ``VdrError``.

    Anything else is a bug (or an infrastructure failure) and keeps its full traceback.
    """
    try:
        main()
    except VdrError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(USAGE_ERROR_EXIT_CODE)
