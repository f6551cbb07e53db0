"""The `xdpguard` command: root group, error handling, exit codes."""

from __future__ import annotations

import sys

import click

from xdpguard import __version__
from xdpguard.core.config import ConfigError
from xdpguard.core.errors import UserError
from xdpguard.core.libbpf import BpfError

from .exitcodes import ExitCode


@click.group(context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "XDPGUARD"})
@click.version_option(__version__, "--version", prog_name="xdpguard")
def cli() -> None:
    """xdpguard: a DDoS protective IP. XDP drops attack traffic at line rate; clean traffic
    goes on to the protected addresses (and, with forwarding, to hidden real servers)."""


def _register() -> None:
    from . import attach, detach, forward, lists, port, run, status
    from . import desired, doctor, lab

    cli.add_command(attach.attach)
    cli.add_command(detach.detach)
    cli.add_command(status.status)
    cli.add_command(lists.make_group("block"))
    cli.add_command(lists.make_group("allow"))
    cli.add_command(port.port)
    cli.add_command(forward.forward)
    cli.add_command(run.run)
    cli.add_command(desired.apply)
    cli.add_command(desired.diff)
    cli.add_command(desired.export)
    cli.add_command(desired.upgrade)
    from . import capture, events, stats, top  # observability (issue 5)
    cli.add_command(top.top)
    cli.add_command(stats.stats)
    cli.add_command(events.events)
    cli.add_command(capture.capture)
    cli.add_command(lab.lab)
    cli.add_command(doctor.doctor)
    from . import ban, filter, fragments, limit, monitor, proto, reflection, syn  # cleansing (issue 4)
    for group in (limit.limit, proto.proto, reflection.reflection, filter.filter_, syn.syn, monitor.monitor,
                  fragments.fragments, ban.ban):
        cli.add_command(group)


_register()


def _fail(msg: str, code: ExitCode) -> int:
    click.echo(f"xdpguard: error: {msg}", err=True)
    return int(code)


def run(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, prog_name="xdpguard", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.Abort:  # click turns Ctrl-C inside a command into Abort
        return _fail("interrupted", ExitCode.INTERRUPTED)
    except KeyboardInterrupt:
        return _fail("interrupted", ExitCode.INTERRUPTED)
    except click.UsageError as exc:
        return _fail(exc.format_message().replace("\n", " "), ExitCode.BAD_INPUT)
    except click.ClickException as exc:
        return _fail(exc.format_message(), ExitCode.BAD_INPUT)
    except ConfigError as exc:  # one line per problem, each naming file, line and field
        for problem in exc.problems[:-1]:
            click.echo(f"xdpguard: error: {problem}", err=True)
        return _fail(exc.problems[-1], ExitCode.BAD_INPUT)
    except UserError as exc:
        return _fail(exc.message, ExitCode.BAD_INPUT)
    except BpfError as exc:
        return _fail(str(exc.strerror or exc), ExitCode.ERROR)
    return int(ExitCode.OK)


def main() -> None:
    sys.exit(run())
