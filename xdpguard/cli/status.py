"""`xdpguard status`: what is really attached, read from the kernel."""

from __future__ import annotations

import click
from rich.table import Table

from xdpguard.core import levels, protection, state
from xdpguard.core.daemon import mitigation

from .output import Console, Result, human_bytes, json_option
from .params import IFACE


def extras(res: protection.StatusResult) -> dict:
    """Each address's protection level and the interface's active automatic mitigations."""
    st = state.read_state(state.Iface(res.iface, res.ifindex, state.netns_key())) or {}
    lv = st.get(levels.STATE_KEY, {})
    active = (st.get(mitigation.STATE_KEY) or {}).get("active", [])
    return {
        "levels": {a: lv.get(a) for a in res.protected},
        "mitigations": [
            {
                "id": m["id"],
                "service": f"{m['protected']} {m['proto']}/{m['port']}",
                "fingerprint": m.get("fingerprint", ""),
            }
            for m in active
        ],
    }


def render_status(c, res: protection.StatusResult) -> None:
    c.print(
        f"[bold]{res.iface}[/] (ifindex {res.ifindex}): xdpguard prog id {res.prog_id}, "
        f"mode {res.mode}{', [yellow]MONITOR[/]' if res.monitor else ''}"
        f"{'' if res.pinned else ' (maps not pinned)'}"
    )
    ex = extras(res)
    shown = [f"{a} (level {ex['levels'][a] or 'none'})" for a in res.protected]
    c.print(f"  protected: {', '.join(shown) or '-'}")
    for m in ex["mitigations"]:
        c.print(f"  mitigation {m['id']} on {m['service']}: {m['fingerprint']}", markup=False)
    c.print(f"  blocklist: {res.list_sizes['block']} entries, allowlist: {res.list_sizes['allow']} entries")
    t = Table(box=None, pad_edge=False, show_edge=False)
    for col in ("action", "reason", "packets", "bytes"):
        t.add_column(col, justify="right" if col in ("packets", "bytes") else "left")
    for cv in res.counters:
        t.add_row(cv.kind, cv.reason, f"{cv.packets}", human_bytes(cv.bytes))
    if res.counters:
        c.print(t)
    else:
        c.print("  no packets seen yet")


@click.command()
@click.argument("iface", type=IFACE, required=False)
@json_option
def status(iface):
    """Show attached program, mode, protected addresses, list sizes and counters."""
    results = protection.status(iface)
    return Result([{**r.to_dict(), **extras(r)} for r in results], lambda c, _: _statuses(c, results))


def _statuses(c: Console, results: list[protection.StatusResult]) -> None:
    if not results:
        c.print("no interface is protected by xdpguard in this network namespace")
    for r in results:
        render_status(c, r)
