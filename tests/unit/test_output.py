"""The CLI's one result type and one renderer (xdpguard/cli/output.py)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import click
from click.testing import CliRunner

from xdpguard.cli import output
from xdpguard.cli.output import Result, json_option
from xdpguard.core.result import as_dict

CLI_DIR = Path(output.__file__).parent


@dataclass(frozen=True)
class Thing:
    name: str
    count: int
    to_dict = as_dict


def _text(c, res: Thing) -> None:
    c.print(f"{res.name}: {res.count}")


@click.command()
@click.option("--fail", is_flag=True)
@json_option
def show(fail):
    return Result(Thing("a", 2), _text, exit_code=3 if fail else 0)


@click.command()
@json_option(help="Only this one's words.")
def quiet():
    click.echo(f"json wanted: {output.json_wanted()}")


def test_text_and_json_of_one_result():
    r = CliRunner().invoke(show, [])
    assert (r.exit_code, r.output) == (0, "a: 2\n")
    r = CliRunner().invoke(show, ["--json"])
    assert r.exit_code == 0 and json.loads(r.output) == {"name": "a", "count": 2}


def test_exit_code_after_either_output():
    for args in ([], ["--json"]):
        r = CliRunner().invoke(show, ["--fail", *args])
        assert r.exit_code == 3 and "2" in r.output


def test_a_command_that_returns_nothing_shows_nothing_more():
    r = CliRunner().invoke(quiet, ["--json"])
    assert (r.exit_code, r.output) == (0, "json wanted: True\n")
    assert "Only this one's words." in CliRunner().invoke(quiet, ["--help"]).output


def test_json_is_defined_once_and_no_command_branches_on_it():
    spelled = {p.name for p in CLI_DIR.glob("*.py") if re.search(r"""["']--json["']""", p.read_text())}
    assert spelled == {"output.py"}
    assert [p.name for p in CLI_DIR.glob("*.py") if "as_json" in p.read_text() and p.name != "output.py"] == []
