"""search_vdr.py's command line: one parser per subcommand (YAML + flags, --help listing every field), the query text
as the positional argument, and bad input as one message with exit code 2."""

from __future__ import annotations

import dataclasses

import pytest

import search_vdr
from tests.helpers import write_yaml
from vdr.errors import VdrError


def parse(*argv: str):
    return search_vdr.make_parser().parse(list(argv))


@pytest.mark.parametrize("command", search_vdr.COMMANDS)
def test_help_lists_every_argument_of_every_subcommand(command):
    parser = search_vdr.make_parser().parser(command)
    help_text = parser.format_help()
    fields = [field.name for group in parser.dataclass_types for field in dataclasses.fields(group) if field.init]
    assert fields and [name for name in fields if f"--{name}" not in help_text] == []


def test_the_query_text_is_the_positional_argument_wherever_it_stands():
    for argv in (["--index", "a", "--index", "b", "the question"], ["the question", "--index", "a", "--index", "b"]):
        command, args = parse("query", *argv)
        assert (command, args.index, args.text) == ("query", ["a", "b"], "the question")
    _, args = parse("serve", "--index", "a", "--port", "0")
    assert (args.host, args.port, args.text) == ("127.0.0.1", 0, None)  # this machine only, by default


def test_index_reads_a_yaml_config_and_the_command_line_beats_it(tmp_path):
    config = write_yaml(
        tmp_path, "index: outputs/x\nmodel: generated:tiny-qwen3-vl\ndataset: generated:pages\ndim: 16\n"
    )
    command, loading, args = parse("index", "--config", config, "--dim", "32", "--max_pixels", "36864")
    assert (command, args.index, args.dim, args.precision, loading.max_pixels) == (
        "index",
        "outputs/x",
        32,
        "float32",
        36864,
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search"], "Unknown command 'search'"),
        (["index", "--index", "x", "--model", "m"], "exactly one of --input_dir, --pages or --dataset"),
        (["index", "--index", "x", "--model", "m", "--dataset", "d", "--precision", "int4"], "--precision 'int4'"),
        (["index", "--index", "x", "--model", "m", "--dataset", "d", "--ann_index", "hnsw"], "--ann_index 'hnsw'"),
        (["query", "--top_k", "3", "text"], "give at least one --index"),
        (["query", "--index", "x", "--topk", "3"], "Did you mean 'top_k'?"),
    ],
)
def test_bad_input_is_one_clear_message(argv, message):
    with pytest.raises(VdrError, match=message):
        parse(*argv)


def test_bad_input_exits_with_code_2_and_no_traceback(capsys):
    with pytest.raises(SystemExit) as exit_info:
        search_vdr.cli(["search_vdr.py", "query", "--index", "/nowhere/index", "text"])
    printed = capsys.readouterr().err
    assert exit_info.value.code == 2 and printed.startswith("error: There is no index at '/nowhere/index'")
    assert "Traceback" not in printed
