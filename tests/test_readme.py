"""Every command the README shows runs as written, in a cheap form.

- `python <script>.py ...` (also under `accelerate launch` / `torchrun`): the arguments parse (config files exist,
  every flag is known and well typed; GPU recipes with `--use_cpu true` on a machine without one) and, for
  training, pass the checks made before anything loads; a command
  the README follows with `# error: ...` must fail with that message. The quickstart itself runs in full in
  test_train.py.
- `python benchmarks/<bench>.py ...`: starts from the repository root as a fresh clone would (`--help`), which
  catches import errors.
- `pip install -r <file>`: the file exists.
"""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys

import pytest
import torch

from vdr.errors import VdrError

from .conftest import REPO_ROOT

LAUNCHERS = ("accelerate", "torchrun")


def readme_commands() -> list[tuple[str, str | None]]:
    """(command, expected error or None) for each command in the README's bash blocks."""
    text = (REPO_ROOT / "README.md").read_text()
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


COMMANDS = readme_commands()


def test_the_readme_shows_the_set_up_and_test_commands_first():
    assert [command for command, _ in COMMANDS[:3]] == [
        "pip install -r requirements.txt",
        "python train_vdr.py --config configs/quickstart.yaml",
        "pip install -r requirements-dev.txt",
    ]


def script_and_arguments(command: str) -> tuple[str, list[str]] | None:
    words = shlex.split(command)
    if words[0] in LAUNCHERS:
        words = ["python", *words[next(i for i, word in enumerate(words) if word.endswith(".py")) :]]
    if words[0] != "python" or not words[1].endswith(".py"):
        return None
    return words[1], words[2:]


@pytest.mark.parametrize(("command", "error"), COMMANDS, ids=[command[:80] for command, _ in COMMANDS])
def test_readme_command_runs_as_written(command, error, vdr_cache):
    words = shlex.split(command)
    if words[:2] == ["pip", "install"]:
        for index, word in enumerate(words):
            if word == "-r":
                assert (REPO_ROOT / words[index + 1]).is_file(), command
        return
    if words[:3] == ["python", "-m", "pytest"]:
        return  # this very suite
    parsed = script_and_arguments(command)
    assert parsed is not None, f"The README command {command!r} has no cheap check here: add one."
    script, arguments = parsed
    assert (REPO_ROOT / script).is_file(), command
    if "/" in script:  # a benchmark or tool: start it as a fresh clone would
        result = subprocess.run(
            [sys.executable, script, "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr[-2000:]
        return
    check_arguments(importlib.import_module(script.removesuffix(".py")), arguments, error)


def check_arguments(module, arguments: list[str], error: str | None) -> None:
    if module.__name__ in ("train_vdr", "train_reranker_vdr") and not torch.cuda.is_available():
        arguments = [*arguments, "--use_cpu", "true"]  # bf16 recipes validate only with a GPU or use_cpu
    try:
        groups = module.make_parser().parse(arguments)
        if module.__name__ == "train_vdr":
            from vdr.config import check_training_run

            model, data, loss, _, training, _lora = groups
            check_training_run(model, data, loss, training)
    except SystemExit as exit_info:  # --help
        assert exit_info.code == 0 and "--help" in arguments
        return
    except VdrError as raised:
        assert error is not None, f"{raised}"
        assert error.removeprefix("error: ") in str(raised)
        return
    assert error is None, f"expected the error {error!r}"
