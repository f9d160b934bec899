"""The `scanbridge` command line is a public contract: every command and option of the argparse CLI it
replaced parses to the same value with the same default, in any order, and every one has help."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer

from scanbridge.entrypoints import cli
from scanbridge.entrypoints.cli import main
from tests.conftest import REPO

FLAG = object()  #: an option that takes no value
REQUIRED = object()  #: an option without a default

#: the options of the argparse CLI that Typer replaced: option -> (default, a value as typed, what it parses to)
OPTIONS: dict[tuple[str, ...], dict[str, tuple[Any, Any, Any]]] = {
    ("serve",): {"--host": ("127.0.0.1", "0.0.0.0", "0.0.0.0"), "--port": (8000, "8001", 8001)},
    ("worker",): {"--task-id": (REQUIRED, "t-1", "t-1"), "--scan-index": (None, "3", 3)},
    ("inspect",): {},
    ("run-scan",): {"--model": ("tissue", "nuclei", "nuclei"), "--onnx": (None, "m.onnx", "m.onnx"),
                    "--spec": (None, "s.json", "s.json"), "--out": ("scanbridge-out", "o", "o"),
                    "--no-artifacts": (False, FLAG, True)},
    ("evaluate",): {"--json": (False, FLAG, True)},
    ("mhs",): {},
    ("mcp",): {"--url": (None, "http://h:1", "http://h:1"), "--api-key": (None, "k", "k"),
               "--webhook-secret": (None, "s", "s"), "--files-port": (8902, "9000", 9000)},
    ("submit",): {"--url": ("http://127.0.0.1:8000", "http://h:1", "http://h:1"), "--api-key": (None, "k", "k"),
                  "--model": ("", "nuclei", "nuclei"), "--wait": (False, FLAG, True),
                  "--timeout": (1800.0, "2.5", 2.5), "--task-id": ("", "t", "t"),
                  "--company-id": ("local", "c", "c"), "--webhook-secret": (None, "s", "s"),
                  "--files-port": (8902, "9000", 9000)},
    ("tasks",): {"--url": ("http://127.0.0.1:8000", "http://h:1", "http://h:1"), "--api-key": (None, "k", "k"),
                 "--status": (None, "RUNNING", "RUNNING"), "--limit": (50, "5", 5), "--json": (False, FLAG, True)},
    ("dev", "make-slide"): {
        "--width": (8192, "512", 512), "--height": (8192, "384", 384), "--tissue-fraction": (0.25, "0.2", 0.2),
        "--tile-size": (256, "512", 512), "--mpp": (0.25, "0.5", 0.5), "--seed": (0, "-3", -3),
        "--quality": (85, "90", 90), "--no-nuclei": (False, FLAG, True), "--positive-fraction": (0.0, "0.3", 0.3),
        "--blur-sigma": (0.0, "1.5", 1.5), "--blank": (False, FLAG, True),
        "--truth-json": (None, "t.json", Path("t.json"))},
    ("dev", "bench"): {
        "--model": ("tissue", "bench-conv", "bench-conv"), "--json": (False, FLAG, True),
        "--batch-size": (None, "8", 8), "--readers": (None, "3", 3), "--tile-size": (None, "256", 256),
        "--overlap": (None, "16", 16), "--threads": (0, "2", 2), "--cpu": (False, FLAG, True),
        "--device": (None, "cuda", "cuda"), "--tensorrt": (False, FLAG, True),
        # argparse computed $SCANBRIDGE_DATA_DIR/tensorrt at parse time; now bench_command does (see below)
        "--trt-cache": (None, "c", Path("c")), "--no-naive": (False, FLAG, True),
        "--truth": (None, "t.json", Path("t.json")), "--min-tissue": (None, "0", 0.0),
        "--repeat": (3, "1", 1)},
    ("dev", "platform"): {
        "--port": (8901, "0", 0), "--send": (None, "http://127.0.0.1:8000/webhook", "http://127.0.0.1:8000/webhook"),
        "--task-id": (None, "t", "t"), "--model": ("", "nuclei", "nuclei"), "--company-id": ("2380941", "c", "c"),
        "--case-id": ("aHVtYW5DYXNlOjI0MjEzNjY=", "case", "case"), "--jwt": (False, FLAG, True),
        "--api-key": (None, "k", "k"), "--expires": (3600, "60", 60), "--timeout": (300.0, "0.5", 0.5)},
    ("dev", "make-image"): {"--truth": (None, "t.geojson", Path("t.geojson")), "--size": (640, "64", 64),
                            "--seed": (0, "4", 4)},
    ("dev", "build-models"): {"--out": ("models", "m", "m")},
}
#: positional arguments as typed -> what they parse to (str where argparse kept str, Path where it made one)
POSITIONALS: dict[tuple[str, ...], tuple[list[str], dict[str, Any]]] = {
    ("inspect",): (["a.svs", "b.tif"], {"files": ["a.svs", "b.tif"]}),
    ("run-scan",): (["a.svs"], {"files": ["a.svs"]}),
    ("evaluate",): (["p.geojson", "g.npy"], {"pred": "p.geojson", "gt": "g.npy"}),
    ("submit",): (["a.svs", "https://x/b.svs"], {"inputs": ["a.svs", "https://x/b.svs"]}),
    ("dev", "make-slide"): (["o.svs"], {"out": Path("o.svs")}),
    ("dev", "bench"): (["s.svs"], {"slide": Path("s.svs")}),
    ("dev", "platform"): (["f.svs", "g.svs"], {"files": [Path("f.svs"), Path("g.svs")]}),
    ("dev", "make-image"): (["o.png"], {"out": Path("o.png")}),
}
ENV = ("SCANBRIDGE_URL", "SCANBRIDGE_API_KEY", "SCANBRIDGE_WEBHOOK_SECRET")


@pytest.fixture(autouse=True)
def _no_client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # rich lays help out for the terminal: one option a line


def _command(path: tuple[str, ...]) -> Any:
    """The click command behind `scanbridge PATH...`."""
    command: Any = typer.main.get_command(cli.app)
    for name in path:
        command = command.commands[name]
    return command


def _plain(value: Any) -> Any:
    """A parsed value as Typer versions agree on it (before 0.2x a path stays a str, a list a tuple, until
    the call: the commands' own tests see the converted values)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def _parse(path: tuple[str, ...], args: list[str]) -> dict[str, Any]:
    """What `scanbridge PATH ARGS` hands its command function (parsing only: nothing runs)."""
    with _command(path).make_context(" ".join(("scanbridge", *path)), args) as ctx:
        return {k: _plain(v) for k, v in ctx.params.items()}


def _names(path: tuple[str, ...]) -> dict[str, str]:
    """option spelling -> the parameter it fills."""
    return {opt: p.name for p in _command(path).params for opt in p.opts if opt.startswith("--")}


def _given(options: dict[str, tuple[Any, Any, Any]]) -> list[str]:
    return [a for opt, (_, typed, _) in options.items() for a in ([opt] if typed is FLAG else [opt, typed])]


def test_the_commands_are_exactly_those_of_before() -> None:
    # GIVEN the app / THEN its commands and the dev sub-app's are the argparse CLI's, by the same names
    top = _command(())
    assert set(top.commands) == {p[0] for p in OPTIONS} | {"dev"}
    assert set(top.commands["dev"].commands) == {p[1] for p in OPTIONS if p[0] == "dev"}


@pytest.mark.parametrize("path", sorted(OPTIONS), ids=" ".join)
def test_every_option_of_before_has_its_default_and_parses_its_value(path: tuple[str, ...]) -> None:
    # GIVEN a command and its options of before, with their defaults and a value for each
    options = OPTIONS[path]
    positionals, parsed_positionals = POSITIONALS.get(path, ([], {}))
    required = [a for opt, (default, typed, _) in options.items() if default is REQUIRED for a in (opt, typed)]
    names = _names(path)
    # THEN each spelling is an option of the command (and it has no other, but --help)
    assert set(options) == set(names) - {"--help"}
    # WHEN only what is required is given / THEN every other option has the default it had
    defaults = _parse(path, [*required, *positionals])
    for opt, (default, _, _) in options.items():
        if default is not REQUIRED:
            assert defaults[names[opt]] == default, opt
    # WHEN every option is given, before the positionals and after them / THEN each parses to its value
    for args in ([*_given(options), *positionals], [*positionals, *_given(options)]):
        values = _parse(path, args)
        assert {opt: values[names[opt]] for opt in options} == {opt: _plain(v) for opt, (_, _, v) in options.items()}
        assert {k: values[k] for k in parsed_positionals} == {k: _plain(v) for k, v in parsed_positionals.items()}


@pytest.mark.parametrize("path", sorted(OPTIONS), ids=" ".join)
def test_every_help_exits_0_and_explains_every_option(path: tuple[str, ...],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    # WHEN `scanbridge PATH --help` runs
    code = main([*path, "--help"])
    text = capsys.readouterr().out
    # THEN it exits 0, names every option, and every option has a help text of its own
    assert code == 0
    for opt in OPTIONS[path]:
        assert re.search(rf"{re.escape(opt)}\b", text), (opt, text)
    assert all(p.help for p in _command(path).params), [p.name for p in _command(path).params if not p.help]


def test_the_top_and_dev_help_list_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    # WHEN `scanbridge --help` and `scanbridge dev --help` run / THEN each lists all of its commands
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert all(re.search(rf"\b{name}\b", top) for name in {p[0] for p in OPTIONS}), top
    assert main(["dev", "-h"]) == 0
    dev = capsys.readouterr().out
    assert all(re.search(rf"\b{p[1]}\b", dev) for p in OPTIONS if p[0] == "dev"), dev


def test_where_a_model_is_chosen_the_help_lists_the_model_names(capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the models the commands can load
    from scanbridge.devtools.bench import BENCH_MODELS, REPEAT, REPEAT_BUDGET_S
    from scanbridge.imaging.tiling import DEFAULT_MIN_TISSUE
    from scanbridge.inference.zoo import builtin_names

    # THEN the names the CLI lists without importing them are exactly those
    assert sorted(cli.BUILTIN_MODELS) == builtin_names()
    assert sorted(cli.BENCH_MODELS) == sorted(BENCH_MODELS)
    assert cli.DEFAULT_MIN_TISSUE == DEFAULT_MIN_TISSUE
    assert (cli.BENCH_REPEAT, cli.BENCH_REPEAT_BUDGET_S) == (REPEAT, REPEAT_BUDGET_S)
    # AND run-scan's and dev bench's help name every one
    main(["run-scan", "--help"])
    run_scan = capsys.readouterr().out
    main(["dev", "bench", "--help"])
    bench = capsys.readouterr().out
    assert all(name in run_scan for name in builtin_names()), run_scan
    assert all(name in bench for name in BENCH_MODELS), bench


def test_client_options_default_to_their_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN SCANBRIDGE_URL, SCANBRIDGE_API_KEY and SCANBRIDGE_WEBHOOK_SECRET set
    monkeypatch.setenv("SCANBRIDGE_URL", "http://bridge:9")
    monkeypatch.setenv("SCANBRIDGE_API_KEY", "env-key")
    monkeypatch.setenv("SCANBRIDGE_WEBHOOK_SECRET", "whsec_env")
    # WHEN mcp, submit and tasks parse without those options / THEN they take the environment's values
    for path, extra in ((("mcp",), []), (("submit",), ["a.svs"]), (("tasks",), [])):
        values = _parse(path, extra)
        assert values["url"] == "http://bridge:9" and values["api_key"] == "env-key", path
        if "webhook_secret" in values:
            assert values["webhook_secret"] == "whsec_env", path
    # AND an option given still wins over the environment
    assert _parse(("tasks",), ["--url", "http://other:1"])["url"] == "http://other:1"


def test_dev_bench_trt_cache_defaults_to_the_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # GIVEN SCANBRIDGE_DATA_DIR / THEN the engine cache default is its tensorrt folder, as argparse's was
    from scanbridge.devtools.bench import default_trt_cache

    monkeypatch.setenv("SCANBRIDGE_DATA_DIR", str(tmp_path))
    assert default_trt_cache() == tmp_path / "tensorrt"
    monkeypatch.delenv("SCANBRIDGE_DATA_DIR")
    assert default_trt_cache() == Path(".scanbridge") / "tensorrt"


@pytest.mark.parametrize(("argv", "names"), [
    ([], "Missing command"),
    (["dev"], "Missing command"),
    (["no-such-command"], "no-such-command"),
    (["serve", "--port", "eighty"], "--port"),
    (["worker"], "--task-id"),
    (["dev", "bench", "s.svs", "--device", "gpu"], "--device"),
    (["run-scan", "--no-artifacts=yes", "a.svs"], "--no-artifacts"),
], ids=["nothing", "dev-nothing", "unknown", "not-an-int", "required", "not-a-choice", "flag-with-value"])
def test_usage_errors_exit_2_and_name_the_problem(argv: list[str], names: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # WHEN the command line is wrong / THEN exit 2 (as argparse's) and the message names what is wrong
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert names in captured.out + captured.err


def test_commands_return_their_exit_status_through_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN paths that do not exist
    missing = str(tmp_path / "missing.svs")
    # WHEN dev bench and dev platform get them (options first) / THEN their own exit 2 comes back
    assert main(["dev", "bench", "--json", missing]) == 2
    assert "no such slide" in capsys.readouterr().err
    assert main(["dev", "platform", "--port", "0", "--timeout", "0.1", missing]) == 2
    assert "no such file" in capsys.readouterr().err
    # WHEN run-scan is asked for a model nobody has / THEN a coded error, exit 2, before any file is read
    assert main(["run-scan", "--model", "no-such-model", "--out", str(tmp_path / "o"), missing]) == 2
    assert "MODEL_NOT_FOUND" in capsys.readouterr().err


def test_dev_make_image_runs_with_options_before_and_after(tmp_path: Path) -> None:
    # WHEN make-image runs with its options first, and the module's own main with them last
    from PIL import Image

    from scanbridge.devtools import sample_image

    first, last = tmp_path / "a.png", tmp_path / "b.png"
    assert main(["dev", "make-image", "--size", "96", "--seed", "3", "--truth", str(tmp_path / "t.json"),
                 str(first)]) == 0
    assert sample_image.main([str(last), "--size", "96", "--seed", "3"]) == 0
    # THEN both wrote the same 96 px image, and the truth beside the first
    assert Image.open(first).size == (96, 96) and first.read_bytes() == last.read_bytes()
    assert (tmp_path / "t.json").read_text().startswith('{"type": "FeatureCollection"')


def test_the_command_line_page_names_only_real_commands_and_options() -> None:
    # GIVEN the "Command line" table (docs/cli.md, moved there from the README)
    table = (REPO / "docs" / "cli.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| `scanbridge ")]
    assert len(rows) >= len(OPTIONS)
    for row in rows:
        usage = row.split("`")[1]
        words = usage.split()[1:]
        path = tuple(words[:2]) if words[0] == "dev" else (words[0],)
        # THEN each row's command exists and each option it writes is one of that command's
        assert path in OPTIONS, row
        for opt in re.findall(r"--[a-z][a-z-]*", usage):
            assert opt in OPTIONS[path], (path, opt)
