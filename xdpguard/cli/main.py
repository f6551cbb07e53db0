"""The `xdpguard` command: root group, error handling, exit codes."""

from __future__ import annotations

import os
import sys

import click

from xdpguard import __version__
from xdpguard.core.desired.load import ConfigError
from xdpguard.core.errors import UserError
from xdpguard.core.kernel.libbpf import BpfError
from xdpguard.core.model.vocab import check_text, shown

from .exitcodes import ExitCode


# The environment variables xdpguard reads (and no other: options are not settable from the
# environment, so a stray XDPGUARD_* cannot change what a command does). README: "Environment".
ENVIRONMENT = {
    "XDPGUARD_CONFIG": "desired-state file of apply/diff (default /etc/xdpguard/xdpguard.toml)",
    "XDPGUARD_LOCK_TIMEOUT": "seconds a mutating command waits for the interface lock (default 30)",
    "XDPGUARD_BPFFS": "bpffs directory of the pins (default /run/xdpguard/bpffs)",
    "XDPGUARD_STATE_DIR": "state directory (default /var/lib/xdpguard)",
    "XDPGUARD_RUN_DIR": "runtime directory: locks, event log (default /run/xdpguard)",
    "XDPGUARD_LAB_NAME": "name of the `xdpguard lab` topology (default lab)",
    "XDPGUARD_TCP_GRACE": "seconds after attach that unseen connections pass TCP state (default 10)",
    "XDPGUARD_GEO_DB": "country database of geo rules (default Debian's libloc-database; a .mmdb works too)",
    "BCC_KERNEL_SOURCE": "kernel headers for bcc (read by bcc and doctor)",
}


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="\b\nEnvironment (no other variable is read; options are not set from the environment):\n"
    + "\n".join(f"  {k:<22} {v}" for k, v in ENVIRONMENT.items()),
)
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
    from . import report  # attack reports (issue 11)

    cli.add_command(report.report)
    cli.add_command(lab.lab)
    cli.add_command(doctor.doctor)
    from . import cluster  # many nodes, one protective IP (issue 12)

    cli.add_command(cluster.cluster)
    from . import ban, filter, fragments, limit, monitor, proto, reflection, syn  # cleansing (issue 4)

    for group in (
        limit.limit,
        proto.proto,
        reflection.reflection,
        filter.filter_,
        syn.syn,
        monitor.monitor,
        fragments.fragments,
        ban.ban,
    ):
        cli.add_command(group)
    from . import connlimit, level, mitigations  # automatic mitigation, levels, connection limits (issue 13)

    cli.add_command(mitigations.mitigations)
    cli.add_command(level.level)
    from . import cc  # HTTP services behind HAProxy (issue 29)

    cli.add_command(cc.cc)
    cli.add_command(connlimit.connlimit_)
    from . import verify  # verified clients, admission budgets (issue 25)

    cli.add_command(verify.verify)
    from . import geo, origin  # region blocking, the hidden real server (issue 28)

    cli.add_command(geo.geo)
    cli.add_command(origin.origin_rules)
    from . import watermark  # the UDP watermark (issue 28 part 2)

    cli.add_command(watermark.watermark)


_register()


def _one_line(msg: str) -> str:
    """The message as one printable line: line breaks of a value shown as spaces, lone
    surrogates (invalid UTF-8 given to us) as U+FFFD."""
    msg = " ".join(str(msg).splitlines()) or "?"
    return shown(msg).replace("\x00", "\\0")


def _fail(msg: str, code: ExitCode) -> int:
    click.echo(f"xdpguard: error: {_one_line(msg)}", err=True)
    return int(code)


def _arg_name(argv: list[str], i: int) -> str:
    """What argv[i] is, for a message: '--hook' for `--hook=X` or `--hook X`, else 'argument'."""
    a = argv[i]
    if a.startswith("--") and "=" in a:
        return a.partition("=")[0]
    prev = argv[i - 1] if i else ""
    if prev.startswith("-") and prev != "--" and "=" not in prev and len(prev) > 1:
        return prev
    return "argument"


def _check_inputs(argv: list[str]) -> None:
    """Every argument and every variable of ENVIRONMENT must be text: UTF-8 without control
    characters (the ParamTypes then check what each means)."""
    for i, a in enumerate(argv):
        check_text(a, _arg_name(argv, i))
    for name in ENVIRONMENT:
        if name in os.environ:
            check_text(os.environ[name], name)


def run(argv: list[str] | None = None) -> int:
    try:
        args = sys.argv[1:] if argv is None else list(argv)
        _check_inputs(args)
        cli.main(args=args, prog_name="xdpguard", standalone_mode=False)
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
            click.echo(f"xdpguard: error: {_one_line(problem)}", err=True)
        return _fail(exc.problems[-1], ExitCode.BAD_INPUT)
    except UserError as exc:
        return _fail(exc.message, ExitCode.BAD_INPUT)
    except BpfError as exc:
        return _fail(str(exc.strerror or exc), ExitCode.ERROR)
    return int(ExitCode.OK)


def main() -> None:
    sys.exit(run())
