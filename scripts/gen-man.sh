#!/usr/bin/env bash
# Write xdpguard's man pages, rendered to roff from the click CLI itself (its help texts and
# options): xdpguard(1) and one xdpguard-COMMAND(1) per command, a group's subcommands as
# subsections. Read one with `man -l build/man/xdpguard-block.1`.
# Usage: scripts/gen-man.sh [OUTDIR]   (default: build/man)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$REPO_ROOT/build/man}"
PYTHON="${PYTHON:-$REPO_ROOT/.venv/bin/python}"
[[ -x "$PYTHON" ]] || { echo "gen-man.sh: error: $PYTHON not found; run scripts/setup.sh" >&2; exit 2; }
# The date of the last commit, so the pages only change when the code does.
DATE="$(git -C "$REPO_ROOT" log -1 --format=%cs 2>/dev/null || date -u +%Y-%m-%d)"

mkdir -p "$OUT"
"$PYTHON" - "$OUT" "$DATE" <<'PYEOF'
import inspect
import sys
from pathlib import Path

import click

from xdpguard import __version__
from xdpguard.cli.main import cli

out, date = Path(sys.argv[1]), sys.argv[2]


def esc(text: str) -> str:
    """Plain text → roff: backslashes, hyphens (\\- keeps option names copy-pasteable) and
    lines that would start a request; non-ASCII characters as \\[uXXXX]."""
    t = text.replace("\\", "\\e").replace("-", "\\-")
    t = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in t)  # ASCII pages: groff needs no preconv
    return "\n".join("\\&" + ln if ln.startswith((".", "'")) else ln for ln in t.split("\n"))


def paragraphs(help_text: str) -> str:
    """click help → .PP paragraphs; a paragraph click marks \\b (no rewrap) stays as written."""
    parts = []
    for para in inspect.cleandoc(help_text or "").split("\n\n"):
        if not para.strip():
            continue
        if para.startswith("\b"):
            parts.append(".PP\n.nf\n" + esc(para[1:].strip("\n")) + "\n.fi")
        else:
            parts.append(".PP\n" + esc(" ".join(para.split())))
    return "\n".join(parts)


def synopsis(cmd: click.Command, ctx: click.Context) -> str:
    return f".B {esc(ctx.command_path)}\n" + esc(" ".join(cmd.collect_usage_pieces(ctx)))


def options(cmd: click.Command, ctx: click.Context) -> str:
    rows = []
    for p in cmd.get_params(ctx):
        if not isinstance(p, click.Option) or p.hidden or (p is cmd.get_help_option(ctx) and ctx.parent is not None):
            continue  # arguments are in the synopsis; --help is said once, in xdpguard(1)
        rec = p.get_help_record(ctx)
        if rec is None:
            continue
        names, help_ = rec
        rows.append(f".TP\n\\fB{esc(names)}\\fR\n{esc(' '.join(help_.split()))}")
    return "\n".join(rows)


def context(cmd: click.Command, name: str, parent: click.Context | None) -> click.Context:
    """The context click would build (context_settings applied), parsing nothing."""
    return cmd.make_context(name, [], parent=parent, resilient_parsing=True)


def visible(group: click.Group, ctx: click.Context) -> list[tuple[str, click.Command]]:
    return [(n, c) for n in group.list_commands(ctx) if (c := group.get_command(ctx, n)) and not c.hidden]


def header(name: str, purpose: str) -> str:
    return (f'.TH {esc(name.upper())} 1 "{date}" "xdpguard {__version__}" "xdpguard manual"\n'
            f".SH NAME\n{esc(name)} \\- {esc(purpose)}\n")


def command_page(name: str, cmd: click.Command, root: click.Context) -> str:
    ctx = context(cmd, name, root)
    page = [header(f"xdpguard-{name}", cmd.get_short_help_str(limit=200).rstrip(".")),
            ".SH SYNOPSIS", synopsis(cmd, ctx), ".SH DESCRIPTION", paragraphs(cmd.help)]
    opts = options(cmd, ctx)
    if opts:
        page += [".SH OPTIONS", opts]
    if isinstance(cmd, click.Group):
        page.append(".SH COMMANDS")
        for sub_name, sub in visible(cmd, ctx):
            sctx = context(sub, sub_name, ctx)
            page += [f".SS {esc(sub_name)}", synopsis(sub, sctx), paragraphs(sub.help)]
            sopts = options(sub, sctx)
            if sopts:
                page += [".PP\nOptions:", ".RS", sopts, ".RE"]
    page += [".SH SEE ALSO", "\\fBxdpguard\\fR(1)"]
    return "\n".join(page) + "\n"


ENVIRONMENT = [
    ("XDPGUARD_BPFFS", "Where maps are pinned (default /run/xdpguard/bpffs)."),
    ("XDPGUARD_STATE_DIR", "State files and the attack event log (default /var/lib/xdpguard)."),
    ("XDPGUARD_RUN_DIR", "Locks (default /run/xdpguard)."),
    ("XDPGUARD_LOCK_TIMEOUT", "Seconds to wait for another xdpguard command's lock (default 30)."),
]
EXIT = [("0", "Success."), ("1", "An unexpected failure."),
        ("2", "Bad input, or a state that forbids the request; nothing was changed. "
              "The error is one line starting with 'xdpguard: error:'."),
        ("130", "Interrupted (Ctrl-C).")]


def root_page(root: click.Context, commands) -> str:
    page = [header("xdpguard", "a DDoS protective IP: XDP filtering, nftables NAT to hidden real servers"),
            ".SH SYNOPSIS", synopsis(cli, root), ".SH DESCRIPTION", paragraphs(cli.help),
            ".SH OPTIONS", options(cli, root), ".SH COMMANDS"]
    for name, cmd in commands:
        page.append(f".TP\n\\fBxdpguard\\-{esc(name)}\\fR(1)\n{esc(cmd.get_short_help_str(limit=200))}")
    page.append(".SH ENVIRONMENT")
    page += [f".TP\n\\fB{esc(k)}\\fR\n{esc(v)}" for k, v in ENVIRONMENT]
    page.append(".SH EXIT STATUS")
    page += [f".TP\n\\fB{k}\\fR\n{esc(v)}" for k, v in EXIT]
    page += [".SH SEE ALSO", ",\n".join(f"\\fBxdpguard\\-{esc(n)}\\fR(1)" for n, _ in commands)]
    return "\n".join(page) + "\n"


root = context(cli, "xdpguard", None)
commands = visible(cli, root)
written = []
for name, cmd in commands:
    path = out / f"xdpguard-{name}.1"
    path.write_text(command_page(name, cmd, root))
    written.append(path)
(out / "xdpguard.1").write_text(root_page(root, commands))
written.append(out / "xdpguard.1")
print("\n".join(str(p) for p in written))
PYEOF
