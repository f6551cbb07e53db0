"""`xdpguard upgrade` across map shapes: a program built with the previous release's shapes
(XG_REASON_MAX 16, smaller ban and bucket maps) is swapped for this one under a flood, with
its lists, bans and counters carried over; a shape that cannot be carried is refused with
nothing changed. Uses the forwarding topology of test_forwarding."""

from __future__ import annotations

import json
import sys
import textwrap
import time

import pytest

from test_forwarding import OTHER4, PROT4, PROT6, Topo, topo  # noqa: F401  (topo: fixture)

pytestmark = pytest.mark.kernel

PY = sys.executable
OLD_SHAPES = {"XG_REASON_MAX": 16, "XG_BANS_MAX": 4096, "XG_SOURCES_MAX": 8192}

# Attach as the previous release did (its shapes), through the same core call `attach` makes.
ATTACH_OLD = textwrap.dedent(f"""\
    from xdpguard.core import reconcile
    reconcile.attach("xgp0", ["{PROT4}", "{PROT6}"], defines={OLD_SHAPES!r})
    """)

# The old program's counters, read with the old stride (kind * 16 + reason).
OLD_STATS = textwrap.dedent("""\
    import ctypes, json, socket
    from xdpguard.core.kernel import dataplane, libbpf
    from xdpguard.core.kernel.abi import Kind, MapName, Reason
    from xdpguard.core.kernel.maps import BpfMap
    att = dataplane.query(socket.if_nametoindex("xgp0"))
    fds = dataplane.map_fds_of_prog(att.prog_id)
    stats = BpfMap(MapName.STATS, fds[MapName.STATS])
    print(json.dumps({"slots": stats.max_entries, "blocklist": sum(
        c.packets for c in stats.get(ctypes.c_uint32(int(Kind.DROP) * 16 + int(Reason.BLOCKLIST))))}))
    """)

REFUSE = textwrap.dedent("""\
    import json, socket
    from xdpguard.core.kernel import dataplane; from xdpguard.core import protection
    from xdpguard.core.errors import UserError
    before = dataplane.query(socket.if_nametoindex("xgp0")).prog_id
    try:
        protection.upgrade("xgp0", defines={"XG_OPBANS_MAX": 1})
        msg = ""
    except UserError as exc:
        msg = exc.message
    print(json.dumps({"msg": msg, "before": before, "after": dataplane.query(socket.if_nametoindex("xgp0")).prog_id}))
    """)


def test_upgrade_from_the_previous_shapes_under_flood_keeps_everything(topo: Topo):
    topo.lab.run(topo.prot, PY, "-c", ATTACH_OLD, timeout=180)
    topo.lab.defer("detach xdpguard", topo.xg, "detach", topo.iface, check=False)
    topo.xg("block", "add", OTHER4)
    topo.xg("ban", "add", "198.51.100.66", "--ttl", "600")
    topo.xg("ban", "add", "198.51.100.67", "--ttl", "600")
    topo.count_leaks(OTHER4)
    flood = topo.udp_flood(7, 2_000_000, 40, 20_000)
    try:
        time.sleep(1.0)
        old = json.loads(topo.lab.run(topo.prot, PY, "-c", OLD_STATS).stdout)
        assert old["slots"] == 3 * 16 and old["blocklist"] > 0, old

        refused = json.loads(topo.lab.run(topo.prot, PY, "-c", REFUSE, timeout=60).stdout)
        assert "xg_opban_hash" in refused["msg"] and "nothing was changed" in refused["msg"], refused
        assert refused["after"] == refused["before"]

        out = topo.xg("upgrade", "xgp0", timeout=180).stdout
        print(out)
        assert (
            "upgraded prog id" in out
            and "counters moved" in out
            and "xg_ban_lru: 0 entries copied into a new map" in out
        ), out  # `ban add` bans live in xg_opban_hash (kept)
        after = topo.status_counter("drop", "blocklist")  # read with this release's stride
        assert after >= old["blocklist"]
        time.sleep(0.5)
        assert topo.status_counter("drop", "blocklist") > after  # the new program counts on
        leaked = topo.leaked()
    finally:
        flood.terminate()
        flood.wait(timeout=30)
    assert leaked == 0
    bans = sorted(b["source"] for b in json.loads(topo.xg("ban", "list", "--json").stdout)["bans"])
    assert bans == ["198.51.100.66", "198.51.100.67"]
    entries = json.loads(topo.xg("block", "list", "--json").stdout)["entries"]
    assert entries[0]["hits"] >= old["blocklist"]
    again = topo.xg("upgrade", "xgp0").stdout
    assert "this version already" in again, again
