"""cli/parser.py and cli/entry.py: the one parser of every front end (raises, never prints or
exits) and what every entry point shares (streams, the last-resort catch, UTF-8 output)."""

from __future__ import annotations

import argparse
import io
import random

import pytest

from qcow2_monitor.cli.argparse_replay import ReplayedParser
from qcow2_monitor.cli.entry import (
    EXIT_INTERRUPTED,
    exception_text,
    last_resort,
    output_streams,
    write_utf8,
)
from qcow2_monitor.cli.outcome import Namespace, ParserExit, UsageError
from qcow2_monitor.cli.parser import ArgumentParser
from qcow2_monitor.cli.version import add_version_argument


def parser_with_commands() -> ArgumentParser:
    parser = ArgumentParser(prog="prog", description="word " * 40)
    parser.add_argument("-n", type=int, default=0)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    one = sub.add_parser("one", help="the first")
    one.add_argument("targets", nargs="+")
    one.add_argument("--flag", action="store_true")
    add_version_argument(one, "prog")
    return parser


def test_a_bad_command_line_raises_with_the_message_and_the_program(
        capsys: pytest.CaptureFixture[str]) -> None:
    parser = parser_with_commands()
    with pytest.raises(UsageError) as raised:
        parser.parse_args(["-n", "x"])
    assert raised.value.message == "argument -n: invalid int value: 'x'"
    assert raised.value.prog == "prog" and raised.value.usage.startswith("usage: prog ")
    with pytest.raises(UsageError) as raised:  # a subcommand's parser names the subcommand
        parser.parse_args(["one", "--flag"])
    assert raised.value.prog == "prog one"
    assert raised.value.message == "the following arguments are required: targets"
    with pytest.raises(UsageError) as raised:
        parser.parse_args(["one", "--bogus", "a"])
    assert raised.value.message == "unrecognized arguments: --bogus"
    with pytest.raises(UsageError):
        parser.parse_args(["two"])
    assert capsys.readouterr() == ("", "")  # argparse printed nothing itself


def test_help_and_version_raise_with_the_text(capsys: pytest.CaptureFixture[str]) -> None:
    parser = parser_with_commands()
    with pytest.raises(ParserExit) as raised:
        parser.parse_args(["--help"])
    assert raised.value.status == 0 and raised.value.text.startswith("usage: prog ")
    assert "COMMAND" in raised.value.text and "one" in raised.value.text
    # The description is wrapped to the help width.
    assert max(len(line) for line in raised.value.text.splitlines()) <= 79
    with pytest.raises(ParserExit) as raised:
        parser.parse_args(["one", "--version"])
    assert raised.value.text.startswith("prog ") and raised.value.text.endswith("\n")
    with pytest.raises(ParserExit) as raised:
        parser.argparse().exit(5, "bye\n")
    assert (raised.value.status, raised.value.text) == (5, "bye\n")
    assert capsys.readouterr() == ("", "")


def test_options_and_positionals_in_any_order() -> None:
    parser = parser_with_commands()
    assert parser.commands.keys() == {"one"}
    args = parser.parse_args(["-n", "3", "one", "a", "--flag", "b"])
    assert (args.n, args.command, args.targets, args.flag) == (3, "one", ["a", "b"], True)
    plain = ArgumentParser(prog="plain")
    plain.add_argument("targets", nargs="*")
    plain.add_argument("--chain", action="store_true")
    assert vars(plain.parse_args(["a", "--chain", "b"])) == {"targets": ["a", "b"],
                                                             "chain": True}


def test_last_resort_turns_any_exception_into_the_failure_code() -> None:
    seen: list[str] = []

    def failure(exc: BaseException) -> int:
        seen.append(exception_text(exc))
        return 7

    def boom() -> int:
        raise RuntimeError("first line\nsecond line \udcff")

    def interrupted() -> int:
        raise KeyboardInterrupt

    assert last_resort(lambda: 4, failure) == 4
    assert last_resort(boom, failure) == 7
    assert seen == ["RuntimeError: first line"]
    assert last_resort(interrupted, failure) == EXIT_INTERRUPTED and len(seen) == 1
    assert exception_text(ValueError()) == "ValueError: "
    assert exception_text(OSError("bad \udcff\tname")) == "OSError: bad \\xff\\x09name"


def test_streams_and_utf8_output(monkeypatch: pytest.MonkeyPatch) -> None:
    given_out, given_err = io.StringIO(), io.StringIO()
    assert output_streams(given_out, given_err) == (given_out, given_err)
    process_out, process_err = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdout", process_out)
    monkeypatch.setattr("sys.stderr", process_err)
    assert output_streams(None, None) == (process_out, process_err)  # looked up when called
    raw = io.BytesIO()
    ascii_stream = io.TextIOWrapper(raw, encoding="ascii")
    ascii_stream.write("before ")
    write_utf8(ascii_stream, "ü\n")  # the locale's encoding could not say it
    assert raw.getvalue() == "before ü\n".encode()
    write_utf8(given_out, "ü")
    assert given_out.getvalue() == "ü"


def test_help_action_needs_no_argparse_exit() -> None:
    """add_help=False leaves -h free (check_qcow2 puts it in a group of its own)."""
    parser = ArgumentParser(prog="p", add_help=False)
    parser.add_argument("-h", dest="host")
    assert parser.parse_args(["-h", "x"]).host == "x"
    assert parser.argparse().parse_args(["-h", "x"]).host == "x"
    assert isinstance(parser.argparse(), argparse.ArgumentParser)


def _appending_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="plain")
    parser.add_argument("targets", nargs="*")
    parser.add_argument("--qmp", action="append", default=[])
    parser.add_argument("--chain", action="store_true")
    return parser


@pytest.mark.parametrize("argv", [
    [], ["a"], ["a", "b", "--qmp", "s1"], ["--qmp", "s1", "a", "--qmp", "s2", "b"],
    ["a", "--chain", "b", "--qmp", "s1", "c"], ["--chain"],
])
def test_the_plain_parse_first_answers_as_the_intermixed_parse(argv: list[str]) -> None:
    reference = argparse.ArgumentParser(prog="plain")
    reference.add_argument("targets", nargs="*")
    reference.add_argument("--qmp", action="append", default=[])
    reference.add_argument("--chain", action="store_true")
    expected = vars(reference.parse_intermixed_args(argv))
    assert vars(_appending_parser().argparse().parse_args(argv)) == expected
    assert vars(_appending_parser().parse_args(argv)) == expected


def test_positionals_in_one_run_need_no_usage_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """argparse's intermixed parse writes the whole usage first; the plain parse, which
    answers when the positionals come in one run, does not."""
    written: list[str] = []
    monkeypatch.setattr(ReplayedParser, "format_usage",
                        lambda self: written.append("usage") or "usage: plain\n")
    _appending_parser().argparse().parse_args(["--qmp", "s", "a", "b"])
    assert written == []
    # split: the intermixed parse
    _appending_parser().argparse().parse_args(["a", "--qmp", "s", "b"])
    assert written == ["usage"]


@pytest.mark.parametrize("columns", [None, "57", "0", "x"])
def test_terminal_columns_as_shutil_finds_them(monkeypatch: pytest.MonkeyPatch,
                                               columns: str | None) -> None:
    import shutil

    from qcow2_monitor.cli.argparse_replay import terminal_columns

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    assert terminal_columns() == shutil.get_terminal_size().columns


# The plain reading (cli/parser.py) against argparse's, on generated lines: wherever the plain
# reading answers, argparse answers the same; everything else is left to argparse.

def _front_end_parsers() -> dict[str, ArgumentParser]:
    from qcow2_monitor.nagios.options import build_parser as nagios_parser
    from qcow2_monitor.node_exporter_textfile.qcow2_textfile import _parser as textfile_parser
    from qcow2_monitor.telegraf.qcow2_telegraf import _parser as telegraf_parser

    counting = ArgumentParser(prog="counting", add_help=False)
    counting.add_argument("-v", action="count")
    counting.add_argument("-n", "--number", type=int, choices=[1, 2, 3], default="2")
    counting.add_argument("--off", action="store_false")
    counting.add_argument("needed", nargs="+")
    counting.set_defaults(extra=7)
    return {"check_qcow2": nagios_parser(), "qcow2-telegraf": telegraf_parser(),
            "qcow2-textfile": textfile_parser(), "counting": counting}


VALUES = ["80", "~:90", "@10:20", "90:80", "10G", "5", "1h", "0", "x", "/srv/a.qcow2",
          "qemu:///system", "", "-1", "-", "--", "a b", "ok", "warning", "free-below-end=ok"]
ODD_WORDS = ["--", "-", "-5", "", "-x", "-fIMG", "-vv", "--no-live=1", "-w=80", "--war",
             "--warning=", "--file=/a", "-h", "--help", "-V", " --qmp", "--bogus"]


def _line(rng: random.Random, flags: list[str]) -> list[str]:
    words: list[str] = []
    for _ in range(rng.randrange(7)):
        kind = rng.random()
        if kind < 0.45:
            words.append(rng.choice(flags))
            if rng.random() < 0.8:
                words.append(rng.choice(VALUES))
        elif kind < 0.6:
            flag = rng.choice([flag for flag in flags if flag.startswith("--")])
            words.append(f"{flag}={rng.choice(VALUES)}")
        elif kind < 0.9:
            words.append(rng.choice(["a.qcow2", "/srv/b.qcow2", "c d.qcow2", "1"]))
        else:
            words.append(rng.choice(ODD_WORDS))
    return words


def _argparse_answer(parser: ArgumentParser, words: list[str]) -> object:
    try:
        return vars(parser.argparse().parse_args(words, Namespace()))
    except (UsageError, ParserExit) as exc:
        return type(exc)


@pytest.mark.parametrize("name", ["check_qcow2", "qcow2-telegraf", "qcow2-textfile", "counting"])
def test_a_plain_reading_answers_as_argparse(name: str) -> None:
    parser = _front_end_parsers()[name]
    flags = [flag for argument in parser.arguments for flag in argument.flags
             if flag.startswith("-")]
    rng = random.Random(name)
    answered = 0
    for _ in range(1500):
        words = _line(rng, flags)
        plain = parser.parse_plain(words)
        if plain is not None:
            answered += 1
            assert vars(plain) == _argparse_answer(parser, words), words
    assert answered > 150  # the plain reading really answers (and is compared) often


@pytest.mark.parametrize("words", [
    ["-f", "/srv/a.qcow2", "--no-live"], ["-f", "/srv/a.qcow2", "-w", "80", "-c", "90"],
    ["--file=/srv/a.qcow2", "--warning-headroom", "20G", "-t", "30", "-v", "-v"],
    ["/srv/a.qcow2", "-w", "~:80", "/srv/b.qcow2", "--running", "--chain"],
])
def test_the_lines_agents_run_are_read_plainly(words: list[str]) -> None:
    parser = _front_end_parsers()["check_qcow2"]
    plain = parser.parse_plain(words)
    assert plain is not None and vars(plain) == _argparse_answer(parser, words)


@pytest.mark.parametrize("words", [
    ["--help"], ["-V"], ["--war", "80", "-f", "a"], ["-f", "a", "--", "b"], ["-w", "-5", "a"],
    ["-w", "x", "a"], ["-f"], ["-fa"], ["-vv", "-f", "a"], ["--bogus", "a"], ["--no-live=1"],
    ["--file=--"], ["-f", "a", "--qmp=--"],
])
def test_other_lines_are_argparse_s(words: list[str]) -> None:
    assert _front_end_parsers()["check_qcow2"].parse_plain(words) is None


def test_a_parser_with_subcommands_is_argparse_s() -> None:
    parser = parser_with_commands()
    assert parser.parse_plain(["one", "a"]) is None
    assert vars(parser.parse_args(["one", "a"])) == {"n": 0, "command": "one",
                                                     "targets": ["a"], "flag": False}
