"""`xdpguard apply | diff | export | upgrade`: desired state as a file. (The imperative verbs
change the desired-state store through core/verbs/imperative.py, store first.)"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from xdpguard.core.observe import capture
from xdpguard.core import reconcile, state
from xdpguard.core.errors import UserError

from .output import Console, Result, json_option
from .params import CONFIG_FILE, IFACE, OUT_FILE


def config_path(path: str | None) -> str:
    p = path or os.environ.get("XDPGUARD_CONFIG") or "/etc/xdpguard/xdpguard.toml"
    return p


_file = click.option(
    "-f",
    "--file",
    "path",
    type=CONFIG_FILE,
    default=None,
    metavar="FILE",
    help="Config file (default $XDPGUARD_CONFIG or /etc/xdpguard/xdpguard.toml).",
)


def _render(c: Console, res: reconcile.ApplyResult) -> None:
    for w in res.warnings:
        c.print(f"[yellow]warning:[/] {w}")
    if not res.text:
        c.print("no changes" + ("" if res.dry_run else "; nothing to do"))
    for line in res.text:
        c.print(line, markup=False)
    if res.dry_run:
        if res.text:
            c.print(f"{len(res.text)} change(s); dry run, nothing applied")
        return
    for r in res.results:
        for n in r.notes:
            c.print(f"note: {n}", markup=False)
    if res.text:
        c.print(f"applied {len(res.text)} change(s) (generation {res.generation})")


@click.command()
@_file
@click.option("--dry-run", is_flag=True, help="Show the diff only (same as `xdpguard diff`).")
@click.option(
    "--force",
    is_flag=True,
    help="Allow protecting this host's management address, a config that removes "
    "every interface's protection (empty or comments only), and new 0.0.0.0/0 or ::/0 list entries.",
)
@json_option
def apply(path, dry_run, force):
    """Make this box match a config file: print the diff, then apply it (all or nothing)."""
    return Result(reconcile.apply_file(config_path(path), force=force, dry_run=dry_run), _render)


@click.command()
@_file
@json_option
def diff(path):
    """Show what `apply` would change, and change nothing."""
    return Result(reconcile.diff_file(config_path(path)), _render)


@click.command()
@click.option(
    "-o",
    "--output",
    "out",
    type=OUT_FILE,
    default=None,
    help="Write to FILE (default: stdout); a new file, or an existing one with --overwrite.",
)
@click.option("--overwrite", is_flag=True, help="Replace the file of -o if it exists (atomically).")
@json_option
def export(out, overwrite):
    """Write the live desired state as a config file (re-applying it changes nothing)."""
    res = reconcile.export()
    return Result({"desired": res.desired}, lambda c, _: _write(c, res.text, out, overwrite))


def _write(c: Console, text: str, out: str | None, overwrite: bool) -> None:
    """The text of `export`: the config itself, to stdout or to the file of -o."""
    if out is None:
        sys.stdout.write(text)
        return
    try:
        if overwrite:  # a fresh temporary renamed over the file (a symlink is replaced, not followed; a device refused)
            state.write_durably(Path(os.path.abspath(out)), text.encode())
        else:
            fd = capture.create_output(out)
            with os.fdopen(fd, "wb") as f:
                f.write(text.encode())
                os.fsync(f.fileno())
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror}") from None
    c.print(f"wrote {out}")


@click.command()
@click.argument("iface", type=IFACE, required=False)
@click.option("--force", is_flag=True, help="Swap even when the attached program is already this version.")
@click.option(
    "--fast-forward",
    is_flag=True,
    help="(experimental) Compile in the forwarding fast path (a spec with fast_path on implies it).",
)
@json_option
def upgrade(iface, force, fast_forward):
    """Swap the attached program for this xdpguard's version without a gap (maps carried over)."""
    state.require_root()
    names = [iface] if iface else reconcile.protection_ifaces()
    if not names:
        raise UserError("no interface is protected in this network namespace")
    results = [reconcile.upgrade(n, force=force, fast_forward=fast_forward) for n in names]
    return Result({"results": [r.to_dict() for r in results]}, lambda c, _: _upgraded(c, results))


def _upgraded(c: Console, results: list) -> None:
    for r in results:
        if r.action == "current":
            c.print(f"{r.iface}: prog id {r.prog_id} is this version already; nothing to do")
        else:
            c.print(
                f"{r.iface}: upgraded prog id {r.old_prog_id} -> {r.prog_id} atomically; {r.maps_kept} maps "
                f"kept as they were" + (f", new maps {', '.join(r.maps_new)}" if r.maps_new else "")
            )
            for n in r.notes:
                c.print(f"  {n}")
