"""README.md and docs/*.md: every command they show runs as written, in a cheap form, and every repository path they
name exists.

- `python <script>.py ...` (also under `accelerate launch` / `torchrun`): the arguments parse (config files exist,
  every flag is known and well typed; GPU recipes with `--use_cpu true` on a machine without one) and, for the
  training scripts, pass the checks made before anything loads; a command a doc follows with `# error: ...` must fail
  with that message. The quickstarts themselves run in full in tests/training/.
- `python benchmarks/<bench>.py ...`: starts from the repository root as a fresh clone would (`--help`), which
  catches import errors.
- `pip install -r <file>`: the file exists.
- A repository path (`vdr/...`, `configs/...`, `benchmarks/...`, `tests/...`, `docs/...`, a top-level file, or a
  relative link) must exist: a stale path is a test failure.
"""

from __future__ import annotations

import functools
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO_ROOT
from vdr.errors import VdrError
from vdr.training.arguments import check_reranker_run, check_run_arguments, check_training_run

LAUNCHERS = ("accelerate", "torchrun")
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
#: The checks each training script runs before anything loads, given its parsed argument groups.
PRE_LOAD_CHECKS = {
    "train_vdr": lambda model, data, loss, _evaluation, training, _lora: check_training_run(
        model, data, loss, training
    ),
    "train_multivector_vdr": lambda _model, data, _loss, _evaluation, training: check_run_arguments(data, training),
    "train_reranker_vdr": lambda _model, data, loss, _evaluation, training: check_reranker_run(data, loss, training),
}
TRAINING_SCRIPTS = tuple(PRE_LOAD_CHECKS)


def doc_commands(path: Path) -> list[tuple[str, str | None]]:
    """(command, expected error or None) for each command in a doc's bash blocks, and each quoted inline."""
    text = path.read_text()
    commands: list[tuple[str, str | None]] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("# error:") and commands:
                commands[-1] = (commands[-1][0], line.removeprefix("# error:").strip())
                continue
            command = line.split(" #", 1)[0].strip()
            if command and not command.startswith("#"):
                commands.extend((part.strip(), None) for part in command.split("&&"))
    # commands quoted inline in the text, e.g. "Benchmark (`python benchmarks/bench_evaluate.py`)"
    for command in re.findall(r"`((?:python|accelerate|torchrun) [^`]+)`", text):
        if (command, None) not in commands:
            commands.append((command, None))
    return commands


COMMANDS = [(doc, command, error) for doc in DOCS for command, error in doc_commands(doc)]


def test_the_readme_shows_the_set_up_and_test_commands_first():
    assert [command for command, _ in doc_commands(REPO_ROOT / "README.md")[:3]] == [
        "pip install -r requirements.txt",
        "python train_vdr.py --config configs/quickstart.yaml",
        "pip install -r requirements-dev.txt",
    ]


def test_the_readme_is_a_front_page():
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= 250


def script_and_arguments(command: str) -> tuple[str, list[str]] | None:
    words = shlex.split(command)
    if words[0] in LAUNCHERS:
        words = ["python", *words[next(i for i, word in enumerate(words) if word.endswith(".py")) :]]
    if words[0] != "python" or not words[1].endswith(".py"):
        return None
    return words[1], words[2:]


@pytest.mark.parametrize(
    ("doc", "command", "error"), COMMANDS, ids=[f"{doc.name}: {command[:70]}" for doc, command, _ in COMMANDS]
)
def test_doc_command_runs_as_written(doc, command, error, vdr_cache):
    words = shlex.split(command)
    if words[:2] == ["pip", "install"]:
        for index, word in enumerate(words):
            if word == "-r":
                assert (REPO_ROOT / words[index + 1]).is_file(), command
        return
    if words[:3] == ["python", "-m", "pytest"]:
        return  # this very suite
    parsed = script_and_arguments(command)
    assert parsed is not None, f"The command {command!r} in {doc.name} has no cheap check here: add one."
    script, arguments = parsed
    assert (REPO_ROOT / script).is_file(), command
    if "/" in script:  # a benchmark or tool: start it as a fresh clone would
        assert help_error(script) == ""
        return
    check_arguments(importlib.import_module(script.removesuffix(".py")), arguments, error)


@functools.cache
def help_error(script: str) -> str:
    """What ``python <script> --help`` printed to stderr when it failed (once per script: several docs name the
    same benchmark), or "" when it started."""
    result = subprocess.run(
        [sys.executable, script, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    return "" if result.returncode == 0 else result.stderr[-2000:]


def check_arguments(module, arguments: list[str], error: str | None) -> None:
    if module.__name__ in TRAINING_SCRIPTS and not torch.cuda.is_available():
        arguments = [*arguments, "--use_cpu", "true"]  # bf16 recipes validate only with a GPU or use_cpu
    try:
        groups = module.make_parser().parse(arguments)
        if module.__name__ in PRE_LOAD_CHECKS:
            PRE_LOAD_CHECKS[module.__name__](*groups)
    except SystemExit as exit_info:  # --help
        assert exit_info.code == 0 and "--help" in arguments
        return
    except VdrError as raised:
        assert error is not None, f"{raised}"
        assert error.removeprefix("error: ") in str(raised)
        return
    assert error is None, f"expected the error {error!r}"


#: A repository path: under one of the repository's folders (outputs/, data/, models/ and the like are what runs
#: write, not repository paths), a script (all are named *_vdr*.py) or a requirements file.
PATH_PATTERN = re.compile(
    r"(?<![\w./-])((?:vdr|configs|benchmarks|tests|docs|\.ci)/[\w./*-]*[\w*]|\w+_vdr(?:_\w+)?\.py|requirements[\w-]*\.txt)"
)
LINK_PATTERN = re.compile(r"\]\((?!https?://|#)([^)#\s]+)")


def stale_paths(text: str, base: Path) -> list[str]:
    """The repository paths ``text`` names that do not exist (a glob must match something), and its relative links
    that lead nowhere (resolved against ``base``, the doc's folder)."""
    missing = []
    for path in PATH_PATTERN.findall(text):
        exists = any(REPO_ROOT.glob(path)) if "*" in path else (REPO_ROOT / path).exists()
        if not exists:
            missing.append(path)
    missing += [link for link in LINK_PATTERN.findall(text) if not (base / link).exists()]
    return missing


@pytest.mark.parametrize("doc", DOCS, ids=lambda doc: doc.name)
def test_every_repository_path_a_doc_names_exists(doc):
    assert stale_paths(doc.read_text(), doc.parent) == []


def test_a_stale_path_is_caught():
    text = (
        "It lives in `vdr/peft_compat.py`; see [the guide](docs/nowhere.md), `train_nothing_vdr.py` and `vdr/cli.py`."
    )
    assert set(stale_paths(text, REPO_ROOT)) == {"vdr/peft_compat.py", "train_nothing_vdr.py", "docs/nowhere.md"}
