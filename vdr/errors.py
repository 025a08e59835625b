"""User-facing errors: a problem the user can fix, with the exit code it ends the run with (``vdr.cli.run_cli`` prints
it as one paragraph, never a traceback)."""

from __future__ import annotations

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


def not_utf8(what: str, error: UnicodeDecodeError) -> VdrError:
    """The one message for an input that is not UTF-8 text: what it is, where the first bad byte is, what to do."""
    return VdrError(
        f"{what} is not UTF-8 text (byte {error.object[error.start]:#04x} at position {error.start}: it was saved in "
        "another encoding, such as Latin-1 or UTF-16). Save it as UTF-8 (in a spreadsheet, 'CSV UTF-8')."
    )
