"""Issue 29 item 7: `[cluster] peers` (the nodes HAProxy shares its stick tables with) — the
loader's checks, the round trip, and what `cluster run` records for the engine's rendering."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path

import pytest

from xdpguard.core.desired.dump import to_toml
from xdpguard.core.desired.load import ConfigError, loads
from xdpguard.core import state
from xdpguard.core.l7 import engine
from xdpguard.core.l7 import haproxy_config as hc
from xdpguard.core.l7.spec import HttpService
from xdpguard.core.model.cluster import ClusterSpec

BASE = '[cluster]\nnode = "fra-1"\nprotect = ["198.18.0.0/24"]\ninsecure = true\n'


def test_peers_load_and_round_trip():
    d, warnings = loads(BASE + 'peers = ["fra-1=198.18.30.1", "fra-2 = 198.18.30.2"]\npeer_port = 11000\n', "n.toml")
    assert warnings == []
    assert d.cluster.peers == ("fra-1=198.18.30.1", "fra-2=198.18.30.2") and d.cluster.peer_port == 11000
    assert loads(to_toml(d))[0] == d
    assert loads(BASE)[0].cluster.peers == ()  # none: the tables are this node's own


@pytest.mark.parametrize(
    "peers, needle",
    [
        ('["fra-1"]', "must be NAME=ADDRESS"),
        ('["fra-1=198.18.30.1", "fra-1=198.18.30.2"]', "named twice"),
        ('["fra-1=198.18.0.7"]', "inside a protected prefix"),
        ('["fra-2=198.18.30.2"]', "must name this node ('fra-1') too"),
    ],
)
def test_bad_peers_are_refused_by_field(peers, needle):
    with pytest.raises(ConfigError) as ei:
        loads(BASE + f"peers = {peers}\n", "n.toml")
    assert any("cluster.peers" in p and needle in p for p in ei.value.problems), ei.value.problems


def test_plain_peers_need_insecure():
    plain = BASE.replace("insecure = true\n", "") + 'peers = ["fra-1=198.18.30.1"]\n'
    with pytest.raises(ConfigError) as ei:
        loads(plain, "n.toml")
    assert any("cluster.peers: need the cluster's TLS" in p for p in ei.value.problems), ei.value.problems
    tls = 'ca = "/etc/x/ca.crt"\ncert = "/etc/x/n.crt"\nkey = "/etc/x/n.key"\nendpoints = ["https://198.18.4.2:2379"]\n'
    assert loads(plain + tls)[0].cluster.peers == ("fra-1=198.18.30.1",)


def _cluster(**kw) -> ClusterSpec:
    return ClusterSpec(node="fra-2", peers=("fra-1=198.18.30.1", "fra-2=198.18.30.2"), **kw)


def test_cluster_run_records_the_peering_the_engine_renders(tmp_path: Path):
    engine.set_peering(None)
    assert engine.peering(tmp_path) == (None, {})
    assert engine.set_peering(_cluster()) is True
    assert engine.set_peering(_cluster()) is False  # unchanged: no second realise needed
    # the record is no interface: `ban list` & co. still find the one protected interface (it
    # was l7.peering.json, a state file of an interface 'l7.peering': "several interfaces")
    assert "l7.peering" not in state.protected_ifaces()
    p, files = engine.peering(tmp_path)
    a1, a2 = ipaddress.ip_address("198.18.30.1"), ipaddress.ip_address("198.18.30.2")
    assert p == hc.Peering("fra-2", (hc.PeerNode("fra-1", a1), hc.PeerNode("fra-2", a2))) and files == {}
    assert engine.set_peering(ClusterSpec(node="fra-2")) is True  # peers taken out: forgotten
    assert engine.peering(tmp_path) == (None, {})


def test_with_the_clusters_certificate_the_peers_are_tls(tmp_path: Path):
    for name in ("c.crt", "c.key", "ca.crt"):
        (tmp_path / name).write_text(f"-----{name}-----\n")
    engine.set_peering(_cluster(cert=str(tmp_path / "c.crt"), key=str(tmp_path / "c.key"), ca=str(tmp_path / "ca.crt")))
    try:
        p, files = engine.peering(Path("/run/x"))
        assert (p.crt, p.ca) == (engine.PEERS_BUNDLE, str(tmp_path / "ca.crt"))
        assert files == {engine.PEERS_BUNDLE: "-----c.crt-----\n-----c.key-----\n"}
    finally:
        engine.set_peering(None)


def test_a_client_only_certificate_is_refused_for_peers(tmp_path: Path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")

    def cert(name: str, eku: str) -> Path:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}"]
            + ["-keyout", str(tmp_path / f"{name}.key"), "-out", str(tmp_path / f"{name}.crt")]
            + ["-addext", f"extendedKeyUsage={eku}"],
            check=True,
            capture_output=True,
        )
        return tmp_path / f"{name}.crt"

    client_only, both = cert("c", "clientAuth"), cert("b", "serverAuth,clientAuth")
    assert not engine.server_usable(str(client_only)) and engine.server_usable(str(both))
    engine.set_peering(_cluster(cert=str(client_only), key=str(tmp_path / "c.key"), ca=str(client_only)))
    try:
        with pytest.raises(engine.UserError, match="clientAuth only"):
            engine.peering(tmp_path)
        engine.set_peering(_cluster(cert=str(both), key=str(tmp_path / "b.key"), ca=str(both)))
        assert engine.peering(tmp_path)[0].crt == engine.PEERS_BUNDLE
    finally:
        engine.set_peering(None)


def test_haproxy_checks_tls_peers_before_the_bundle_is_installed(tmp_path: Path):
    """The first rendering on a node: `haproxy -c` runs in proc's staging directory, where the
    peers' bundle is, not in the run dir, where it is not yet (an absolute path to the run dir
    made HAProxy refuse it: 'unable to stat SSL certificate', seen in the cluster lab)."""
    if shutil.which("openssl") is None or shutil.which("haproxy") is None:
        pytest.skip("openssl or haproxy not installed")
    from xdpguard.core.l7.proc import Haproxy

    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=n"]
        + ["-keyout", str(tmp_path / "n.key"), "-out", str(tmp_path / "n.crt")]
        + ["-addext", "extendedKeyUsage=serverAuth,clientAuth"],
        check=True,
        capture_output=True,
    )
    run = tmp_path / "run"
    engine.set_peering(_cluster(cert=str(tmp_path / "n.crt"), key=str(tmp_path / "n.key"), ca=str(tmp_path / "n.crt")))
    try:
        p, files = engine.peering(run)
    finally:
        engine.set_peering(None)
    svc = HttpService(name="web", listen=["198.18.0.1"], backends=["198.18.1.2:80"])
    rendered = hc.render([svc], run_dir=str(run), secret=b"k" * 32, peering=p)
    assert not (run / engine.PEERS_BUNDLE).exists()
    Haproxy(run).check(rendered, files)  # HaproxyConfigError if refused
