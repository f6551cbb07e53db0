"""The HAProxy configuration builder (xdpguard/core/l7/haproxy_config.py).

Golden files in tests/unit/golden/l7/ hold the exact text for every service shape; regenerate
them with ``XDPGUARD_UPDATE_GOLDEN=1 pytest tests/unit/test_l7_haproxy_config.py`` and review the
diff. Every case is also written out and checked with ``haproxy -c`` (no root, no network): a
golden is a configuration HAProxy 2.6 accepts, not just text we like.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from xdpguard.core.l7 import haproxy_config as hc
from xdpguard.core.l7.spec import LEVELS, ConnLimits, HttpService, RateLimit, Rule, Tls

from test_l7_spec import make_cert

GOLDEN_DIR = Path(__file__).parent / "golden" / "l7"
UPDATE_GOLDEN = os.environ.get("XDPGUARD_UPDATE_GOLDEN") == "1"
RUN_DIR = "/run/xdpguard/l7/test"
SECRET = bytes(range(32))


def _svc(**kw) -> HttpService:
    base = {"name": "web", "listen": ["198.18.0.1", "2001:db8:0:1::1"], "backends": ["198.18.1.2:80"]}
    return HttpService(**{**base, **kw})


FULL = dict(
    domains=["example.com", "*.example.org"],
    backends=["198.18.1.2:80", "[2001:db8:0:2::2]:8080"],
    health_path="/healthz",
    exempt=["/api/", "/healthz"],
    conns=ConnLimits(30, 60),
    challenge_ttl_s=600,
    limits=[
        RateLimit("/", 300),
        RateLimit("/login", 5, window_s=60, action="tarpit", punish_s=120),
        RateLimit("/search", 20, action="challenge"),
        RateLimit("/api/", 100, action="drop", punish_s=0),
    ],
    rules=[
        Rule("allow", path_prefix="/static/", methods=["GET", "HEAD"]),
        Rule("drop", user_agent_regex="(?i)(sqlmap|nikto)", absent_headers=["accept"]),
        Rule(
            "challenge",
            host="*.example.org",
            referer_regex="^$",
            cookies=["session"],
            headers=["x-requested-with"],
            uri_regex="\\.php$",
        ),
    ],
)

CASES = {
    "minimal": lambda: [_svc(listen=["198.18.0.1"])],
    **{f"level_{lv}": (lambda lv=lv: [_svc(level=lv, **FULL)]) for lv in LEVELS},
    "two_services": lambda: [
        _svc(listen=["198.18.0.1"]),
        _svc(name="api", listen=["198.18.0.2"], port=8080, level="strict", exempt=["/"]),
    ],
}


def _render(name: str) -> hc.Rendered:
    return hc.render(CASES[name](), run_dir=RUN_DIR, secret=SECRET)


def _haproxy() -> str:
    exe = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None)
    if exe is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("haproxy is not installed (scripts/setup.sh installs it)")
        pytest.skip("haproxy is not installed")
    return exe


def _check(rendered: hc.Rendered, d: Path, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    d.mkdir(parents=True, exist_ok=True)
    for name, text in {**rendered.files, **(extra or {})}.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    cfg = d / "haproxy.cfg"
    cfg.write_text(rendered.text)
    return subprocess.run([_haproxy(), "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    path = GOLDEN_DIR / f"{name}.cfg"
    text = _render(name).text
    if UPDATE_GOLDEN:
        GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden {path}; run with XDPGUARD_UPDATE_GOLDEN=1"
    assert path.read_text() == text, f"{path.name} differs; if intended, rerun with XDPGUARD_UPDATE_GOLDEN=1"


def test_no_stale_goldens() -> None:
    assert {p.stem for p in GOLDEN_DIR.glob("*.cfg")} == set(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_haproxy_accepts_every_case(name: str, tmp_path: Path) -> None:
    p = _check(_render(name), tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


def test_haproxy_refuses_a_broken_config(tmp_path: Path) -> None:
    # the check above is worth something only if haproxy -c does fail on a bad configuration
    r = _render("minimal")
    p = _check(hc.Rendered(r.text.replace("sc0_conn_cur", "sc0_conn_cur_nonsense"), r.files), tmp_path)
    assert p.returncode != 0 and "sc0_conn_cur_nonsense" in p.stdout + p.stderr


def test_tls_service_binds_with_its_bundle(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    tls = Tls(cert, key)
    r = hc.render([_svc(port=443, tls=tls, level="strict")], run_dir=RUN_DIR, secret=SECRET)
    assert "bind ipv4@198.18.0.1:443 ssl crt tls/web.pem alpn h2,http/1.1" in r.text
    assert '; Secure"' in r.text  # the challenge cookie of an HTTPS service
    p = _check(r, tmp_path / "cfg", {hc.tls_bundle(_svc()): tls.bundle()})
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_defences_are_there() -> None:
    text = _render("level_normal").text
    # slowloris: headers and bodies within the level's time
    assert "timeout http-request 5s" in text and "option http-buffer-request" in text
    # per source tracking and the connection limits
    assert "tcp-request connection track-sc0 src table web_src" in text
    assert "tcp-request connection reject if { sc0_conn_cur gt 30 }" in text
    assert "tcp-request connection reject if { sc0_conn_rate gt 60 }" in text
    assert re.search(
        r"stick-table type ipv6 .* store gpt\(4\),gpc\(3\),gpc_rate\(2,10s\),conn_cur,conn_rate\(10s\),"
        r"http_req_rate\(10s\)",
        text,
    )
    # the service ceiling: the unverified requests of each domain (a wildcard is one), 50/s at normal
    assert "stick-table type string len 64 size 1k expire 60s store gpt(2),http_req_rate(1s)" in text
    assert (
        "http-request set-var(txn.xg_dom) str(*.example.org) if { req.hdr(host),field(1,:),lower -m end .example.org }"
        in text
    )
    assert "http-request track-sc2 var(txn.xg_dom) table web_svc if !xg_verified !xg_exempt" in text
    # the ceiling is read from the map the daemon fills with learned ones (l7/ceiling.py); its
    # default, until then, is the level's number
    assert (
        "http-request set-var(txn.xg_ceil) str(web|),concat(,txn.xg_dom,),map_str_int(ceiling.map,50) "
        "if !xg_verified !xg_exempt" in text
    )
    assert "acl xg_over sc2_http_req_rate,sub(txn.xg_ceil) gt 0" in text
    assert _render("level_normal").files[hc.CEILING_MAP] == ""
    # … or the backend already holds more requests at once than the level allows (a slow flood)
    assert "acl xg_over be_conn(web_be) gt 100" in text
    # crossing it puts the domain in surge for SURGE_HOLD_S (gpt 0 of its entry: until when) …
    assert (
        f"http-request sc-set-gpt(0,2) var(txn.xg_now),add({hc.SURGE_HOLD_S}) if xg_over !xg_verified !xg_exempt"
        in text
    )
    assert "http-request set-var(txn.xg_hold) sc_get_gpt(0,2),sub(txn.xg_now) if !xg_verified !xg_exempt" in text
    assert "acl xg_surge var(txn.xg_hold) -m int gt 0" in text
    # … during which every unverified request is challenged
    assert "http-request set-var(txn.xg_chal) int(1) if xg_surge !xg_verified !xg_exempt" in text
    # per source: the unverified requests counted (gpc 1) and challenged beyond 20 per 10 s at normal
    assert "http-request sc-inc-gpc(1,0) if !xg_verified !xg_exempt" in text
    assert "http-request set-var(txn.xg_chal) int(1) if { sc_gpc_rate(1,0) gt 20 } !xg_verified !xg_exempt" in text
    assert text.index("sc_gpc_rate(1,0) gt 20") < text.index("http-request return status 302")
    # … no budget for a source holding more connections at once than a browser opens
    conns = "http-request set-var(txn.xg_chal) int(1) if { sc0_conn_cur gt 6 } !xg_verified !xg_exempt"
    assert conns in text and text.index(conns) < text.index("http-request return status 302")
    # … nor, in unrest (the domain over a quarter of its ceiling, the learned one or the level's),
    # for a source first seen under KNOWN_BEFORE_S ago (gpt 3: when first seen)
    assert "http-request set-var(txn.xg_sage) sc_get_gpt(3,0),neg,add(txn.xg_now)" in text
    assert "acl xg_new var(txn.xg_sage) -m int lt 5" in text
    assert "acl xg_unrest sc2_http_req_rate,mul(4),sub(txn.xg_ceil) gt 0" in text
    unrest = "http-request set-var(txn.xg_chal) int(1) if xg_unrest xg_new !xg_verified !xg_exempt"
    assert text.index("acl xg_unrest") < text.index(unrest) < text.index("http-request return status 302")
    svc = HttpService("web", listen=["198.18.0.1"], backends=["198.18.1.2:80"], service_rate=80)
    own = hc.render([svc], run_dir=RUN_DIR, secret=SECRET).text
    assert "acl xg_unrest sc2_http_req_rate,mul(4) gt 80" in own and unrest in own  # the operator's ceiling
    # every challenge issued is counted on the source (a bot fails them all: l7/bans.py)
    assert "http-request sc-inc-gpc(0,0) if { var(txn.xg_chal) -m int 1 } !xg_verified" in text
    # the ceiling comes before the challenge it turns on
    assert text.index("if xg_surge !xg_verified") < text.index("http-request return status 302")
    assert "http-request sc-set-gpt(2,0) var(txn.xg_now),add(txn.xg_cleft) if xg_verified" in text  # verified until
    # a second challenge on one HTTP/1.1 connection counts twice: the first was ignored
    need = "{ var(txn.xg_chal) -m int 1 } !xg_verified"
    assert f"http-request sc-inc-gpc(0,0) if {need} {{ req.ver 1.1 }} {{ var(sess.xg_nch) -m int ge 1 }}" in text
    assert (
        text.index("http-request sc-inc-gpc(0,0) if { var(txn.xg_chal)")
        < text.index("{ var(sess.xg_nch) -m int ge 1 }")
        < text.index("var(sess.xg_nch),add(1)")
        < text.index("http-request return status 302")
    )
    # the exempt paths: the first time a source was seen (gpt 3), a ceiling of their own per domain
    # (key `<domain>|x`, 100/s at normal), and in its surge 429 for the sources not seen 5 s before
    assert "http-request sc-set-gpt(3,0) var(txn.xg_now) if { sc_get_gpt(3,0) -m int 0 }" in text
    assert "http-request track-sc2 var(txn.xg_dom),concat(|x,,) table web_svc if xg_exempt !xg_verified" in text
    assert "acl xg_xover sc2_http_req_rate gt 100" in text and "acl xg_xover be_conn(web_be) gt 100" in text
    assert "http-request sc-set-gpt(1,2) var(txn.xg_now) if xg_xover !xg_xsurge xg_exempt !xg_verified" in text
    assert "sc_get_gpt(3,0),add(5),sub(txn.xg_xsince) if xg_exempt !xg_verified" in text
    assert "http-request sc-inc-gpc(2,0) if xg_xsurge !xg_known xg_exempt !xg_verified" in text
    assert "http-request deny deny_status 429 if xg_xsurge !xg_known xg_exempt !xg_verified" in text
    assert "xg_xover" not in _render("minimal").text  # no exempt path: nothing of it
    # the level's ceiling punishes and answers 429
    assert "http-request deny deny_status 429 if { sc0_http_req_rate gt 300 }" in text
    # the longest prefix is limit 0; its tarpit punishes for 120 s
    assert "http-request set-var(txn.xg_lim) int(0) if !{ var(txn.xg_lim) -m found } { path_beg '/search' }" in text
    assert "int(1) if !{ var(txn.xg_lim) -m found } { path_beg '/login' }" in text
    assert "sc-set-gpt(0,0) var(txn.xg_now),add(120) if { var(txn.xg_lim) -m int 1 }" in text
    assert "http-request tarpit deny_status 429 if { var(txn.xg_lim) -m int 1 } { sc1_http_req_rate gt 5 }" in text
    # a challenge limit on an exempt path answers 429 instead
    assert "deny deny_status 429 if { var(txn.xg_lim) -m int 0 } { sc1_http_req_rate gt 20 } xg_exempt" in text
    # X-Forwarded-For: the client's cannot be forged, HAProxy's goes to the backend
    assert "http-request del-header x-forwarded-for" in text and "option forwardfor" in text
    # the precise rules, in order, before the limits
    assert (
        text.index("http-request allow if { method GET HEAD } { path_beg '/static/' }")
        < text.index("http-request silent-drop if { req.hdr(user-agent) -m reg '(?i)(sqlmap|nikto)' }")
        < text.index("sc0_http_req_rate gt 300")
    )
    # normal challenges nobody by default; strict everyone by 302, emergency by JavaScript
    assert "set-var(txn.xg_chal) int(1) unless xg_exempt" not in text
    strict = _render("level_strict").text
    assert "set-var(txn.xg_chal) int(1) unless xg_exempt" in strict and "return status 302" in strict
    emergency = _render("level_emergency")
    assert (
        "lf-file web-challenge.html" in emergency.text and "acl xg_kind var(txn.xg_ckind) -m str j\n" in emergency.text
    )
    assert "location.reload()" in emergency.files["web-challenge.html"]


def test_the_secret_and_sockets_go_where_asked() -> None:
    text = _render("minimal").text
    assert f"stats socket {RUN_DIR}/admin.sock mode 600 level admin expose-fd listeners" in text
    assert "set-var proc.xg_key str(AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=)" in text
    with pytest.raises(ValueError):
        hc.render(CASES["minimal"](), run_dir=RUN_DIR, secret=b"short")
    with pytest.raises(ValueError):
        hc.render(CASES["minimal"](), run_dir="relative/dir", secret=SECRET)


def test_every_stick_table_is_in_the_local_peers_section() -> None:
    # what keeps the tables across a reload (proc.py): the old worker pushes them to the new one
    text = _render("level_normal").text
    tables = [ln for ln in text.splitlines() if ln.strip().startswith("stick-table ")]
    assert len(tables) >= 3 and all(ln.endswith(f" peers {hc.PEERS}") for ln in tables)
    assert f"    localpeer {hc.LOCAL_PEER}\n" in text
    assert f"peers {hc.PEERS}\n    peer {hc.LOCAL_PEER} unix@{RUN_DIR}/{hc.PEERS_SOCKET}\n" in text


def _peering(**kw) -> hc.Peering:
    nodes = tuple(hc.PeerNode(f"node{i}", ipaddress.ip_address(f"198.18.30.{i}")) for i in (1, 2, 3))
    return hc.Peering(**{"local": "node2", "nodes": nodes, **kw})


def test_cluster_peers_share_every_table_from_the_nodes_own_address(tmp_path: Path) -> None:
    r = hc.render(CASES["minimal"](), run_dir=RUN_DIR, secret=SECRET, peering=_peering())
    section = r.text.split(f"peers {hc.PEERS}\n", 1)[1].split("\n\n", 1)[0]
    assert section.splitlines() == [
        "    bind ipv4@198.18.30.2:10470",
        "    server node1 ipv4@198.18.30.1:10470",
        "    server node2",  # the local peer: its address is the bind line's
        "    server node3 ipv4@198.18.30.3:10470",
    ]
    assert "    localpeer node2\n" in r.text and "unix@" not in r.text
    tables = [ln for ln in r.text.splitlines() if ln.strip().startswith("stick-table ")]
    assert tables and all(ln.endswith(f" peers {hc.PEERS}") for ln in tables)
    p = _check(r, tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


def test_cluster_peers_over_tls_with_the_clusters_certificate(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    pem = tmp_path / "node.pem"
    pem.write_text(cert.read_text() + key.read_text())
    r = hc.render(CASES["minimal"](), run_dir=RUN_DIR, secret=SECRET, peering=_peering(crt=str(pem), ca=str(cert)))
    tls = f"ssl crt {pem} ca-file {cert} verify required"
    assert f"    bind ipv4@198.18.30.2:10470 {tls}\n" in r.text and f"    default-server {tls}\n" in r.text
    p = _check(r, tmp_path / "cfg")
    assert p.returncode == 0, p.stdout + p.stderr


def test_cluster_peers_are_refused_on_a_protective_address_or_without_this_node() -> None:
    on_vip = hc.Peering("node1", (hc.PeerNode("node1", ipaddress.ip_address("198.18.0.1")),))
    with pytest.raises(ValueError, match="protective address"):
        hc.render(CASES["minimal"](), run_dir=RUN_DIR, secret=SECRET, peering=on_vip)
    with pytest.raises(ValueError, match="not one of the nodes"):
        _peering(local="node9")
    with pytest.raises(ValueError, match="both crt and ca"):
        _peering(crt="/etc/x.pem")


def test_cluster_peer_names_are_the_clusters_node_names() -> None:
    a = ipaddress.ip_address("198.18.30.1")
    assert hc.Peering("Node-1.dc", (hc.PeerNode("Node-1.dc", a),)).me().name == "Node-1.dc"
    with pytest.raises(ValueError, match="invalid peer name"):
        hc.Peering("a b", (hc.PeerNode("a b", a),))
    with pytest.raises(ValueError, match="repeat"):
        hc.Peering("n", (hc.PeerNode("n", a), hc.PeerNode("n", ipaddress.ip_address("198.18.30.2"))))
