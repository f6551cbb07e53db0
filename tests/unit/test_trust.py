"""Trust boundaries (issue 24, the local half): what reaches the desired-state store, the state
files, the files we write and BIRD's config is what the loader takes back; hostile input is one
error line, never a traceback, and nothing is stored. No root, bcc or kernel: the kernel side is
faked where a verb would reach it (as tests/unit/test_store_first.py does)."""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import threading
from dataclasses import fields, replace
from pathlib import Path

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xdpguard.cli.main import run
from xdpguard.core import policy, protection, reconcile, state, store
from xdpguard.core.model.desired import AddressSpec, Desired, InterfaceSpec
from xdpguard.core.model.cluster import ClusterSpec
from xdpguard.core.desired.load import ConfigError, loads, _CLUSTER_KEYS, load
from xdpguard.core.desired.dump import toml_key, to_toml, to_data
from xdpguard.core.model import vocab
from xdpguard.core.desired.diff import diff
from xdpguard.core.prefixes import parse_prefix
from xdpguard.core.observe import events
from xdpguard.core.cluster import bgp
from xdpguard.core.errors import UserError

IF = "xgt0"
ADDR = ipaddress.ip_address("198.18.0.2")
S0 = InterfaceSpec(IF, addresses=(AddressSpec(ADDR),))
BASE = '[[interface]]\nname = "xgt0"\nprotect = ["198.18.0.2"]\n'
BGP = '[bgp]\nlocal_as = 65001\nrouter_id = "198.18.0.2"\nneighbors = [{ address = "198.18.0.254", as = 65000 }]\n'


@pytest.fixture
def env(monkeypatch, tmp_path):
    for var, sub in (("XDPGUARD_BPFFS", "bpffs"), ("XDPGUARD_STATE_DIR", "state"), ("XDPGUARD_RUN_DIR", "run")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setattr(state, "require_root", lambda: None)
    monkeypatch.setattr(state, "resolve_iface", lambda name: state.Iface(name, 7, state.netns_key()))
    return tmp_path


def one_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("xdpguard: error: "), err
    for n in needles:
        assert n in err[0], (n, err[0])
    return err[0]


def store_bytes() -> bytes | None:
    try:
        return store.desired_path().read_bytes()
    except FileNotFoundError:
        return None


# ---- 1. control characters never reach the store ----


@pytest.mark.parametrize(
    "hook", ["/bin/true\n; x", "/bin/true\x1b[31m", "/bin/true\x85", "/bin/true\x7f", "/bin/true\tx"]
)
def test_a_hook_with_a_control_character_is_refused_by_the_cli(env, monkeypatch, capsys, hook):
    calls = []
    monkeypatch.setattr(reconcile, "edit", lambda *a, **k: calls.append(a))
    assert run(["events", "threshold", "set", "--hook", hook]) == 2
    one_error(capsys, "--hook", "control character")
    assert run(["events", "threshold", "set", f"--hook={hook}"]) == 2
    one_error(capsys, "--hook", "control character")
    assert calls == [] and store_bytes() is None


@pytest.mark.parametrize(
    "snippet, field",
    [
        ('[interface.events]\nhook = "/bin/true\\n; x"\n', "events.hook"),
        ('[interface.events]\nhook = "/bin/true\\u001b[2J"\n', "events.hook"),
        ('[interface.events]\nhook = "/bin/true\\u0085"\n', "events.hook"),
        ('mode = "auto\\n"\n', "interface[0].mode"),
    ],
)
def test_the_loader_refuses_control_characters_naming_the_field(snippet, field):
    text = BASE + snippet if snippet.startswith("[") else BASE.replace('name = "xgt0"\n', 'name = "xgt0"\n' + snippet)
    with pytest.raises(ConfigError) as exc:
        loads(text, "x.toml")
    assert any(field in p and "control character" in p for p in exc.value.problems), exc.value.problems


@pytest.mark.parametrize("announce", ["198.18.0.1\n", 'fe80::1%x";} protocol x {', "fe80::1%eth0", '198.18.0.1"'])
def test_bgp_announce_with_a_newline_a_quote_or_a_zone_is_refused(announce):
    text = BGP + "announce = " + json.dumps([announce]) + "\n"
    with pytest.raises(ConfigError) as exc:
        loads(text, "x.toml")
    assert any("bgp.announce" in p for p in exc.value.problems), exc.value.problems


def test_scoped_addresses_are_refused_everywhere_at_parse_time():
    for text in (
        BASE.replace("198.18.0.2", "fe80::1%x"),
        BGP.replace('"198.18.0.254"', '"fe80::1%x"'),
        BGP + 'require_routes = ["fe80::%x/64"]\n',
    ):
        with pytest.raises(ConfigError, match="scoped|zone|prefix"):
            loads(text, "x.toml")


def test_bird_config_strings_and_addresses_go_through_one_escaper():
    assert bgp.bird_str("/run/x/bird.conf") == '"/run/x/bird.conf"'
    for bad in ('a"b', "a\nb", "a\\b", "a\x1bb"):
        with pytest.raises(UserError, match="BIRD"):
            bgp.bird_str(bad)
    spec, _ = loads(BGP, "x.toml")
    text = bgp.render(spec.bgp, [ipaddress.ip_address("198.18.0.2")], node="n1")
    assert 'route 198.18.0.2/32 via "xgvip0";' in text
    with pytest.raises(UserError, match="scoped"):
        bgp.render(spec.bgp, [ipaddress.ip_address('fe80::1%x";')], node="n1")
    with pytest.raises(UserError, match="control"):
        bgp.render(spec.bgp, [], node="n1\nprotocol x {")


def test_the_store_refuses_what_its_loader_would_refuse_before_writing(env):
    """What the boundary missed (here: a spec built directly) must not corrupt the store for
    good: the text is loaded back before it is fsynced."""
    store.save(Desired((S0,)))
    before = store_bytes()
    bad = replace(S0, events=events.EventConfig(hook="/bin/true\n; x"))
    with pytest.raises(UserError, match="refusing to store"):
        store.save(Desired((bad,)), previous=Desired((S0,)))
    assert store_bytes() == before
    assert store.load() == Desired((S0,))  # still readable: every later verb works


def test_quotes_and_backslashes_round_trip_through_the_store(env):
    hook = '/bin/sh -c "echo \\"a b\\" \\\\ \'c\'"'
    d = Desired((replace(S0, events=events.EventConfig(hook=hook)),))
    store.save(d)
    assert store.load() == d


def test_cluster_table_is_written_generically_from_its_fields():
    """Every ClusterSpec field is written under a key the loader knows (a field added to the
    dataclass and the loader needs no change to the writer), defaults are omitted."""
    for f in fields(ClusterSpec):
        assert toml_key(f.name) in _CLUSTER_KEYS, f.name
    c = ClusterSpec(
        name="c1",
        node="n2",
        endpoints=("http://198.18.0.9:2379", "https://198.18.0.10:2379"),
        node_ttl_s=7,
        resync_interval_s=30.0,
    )
    text = to_toml(Desired(cluster=c))
    assert loads(text)[0].cluster == c
    assert to_data(Desired(cluster=ClusterSpec()))["cluster"] == {}
    assert loads(to_toml(Desired(cluster=ClusterSpec())))[0].cluster == ClusterSpec()


# property: every string the schema accepts round-trips store → load; every control character is refused

ANY_TEXT = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=30),
    st.text(st.sampled_from("az09_.-\"\\' %$;{}#\t\n\x1b\x85\u2028é"), min_size=1, max_size=20),
)


def _hostile_config(draw) -> tuple[dict, list[str]]:
    s = [draw(ANY_TEXT) for _ in range(5)]
    data = {
        "daemon": {"metrics": draw(st.sampled_from(["127.0.0.1:", ":", "[::1]:"])) + s[0]},
        "cluster": {"name": s[1], "node": "n" + s[1], "endpoints": ["http://" + s[2]]},
        "bgp": {
            "local_as": 65001,
            "router_id": "198.18.0.2",
            "neighbors": [{"address": "198.18.0.254", "as": 65000}],
            "bird_config": "/run/" + s[3],
            "bird_socket": "/run/x" + s[3],
            "liveness_interface": s[4][:15] or "x",
        },
        "interface": [{"name": "xgt0", "protect": ["198.18.0.2"], "events": {"hook": "/bin/true " + s[4]}}],
    }
    return data, s


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_every_accepted_string_round_trips_through_the_store(env, data):
    cfg, strings = _hostile_config(data.draw)
    for part in (cfg, *({k: v} for k, v in cfg.items())):  # all at once, and each table alone
        text = tomli_w.dumps(part)
        try:
            d, _ = loads(text, "x.toml")
        except ConfigError as exc:
            assert all(p.startswith("x.toml") for p in exc.problems)
            continue
        for s in strings:
            if any(s and s in v for v in _strings_of(d)):
                assert vocab.control_char(s) is None, s
        store.save(d)
        assert store.load() == d
        assert loads(to_toml(d), "again.toml")[0] == d


def test_odd_but_valid_strings_round_trip_through_the_store(env):
    """The property's accepted side, pinned: quotes, backslashes, '#', braces, '%', non-ASCII
    and U+2028 (a line separator that is no control character) in every free-text field."""
    odd = 'a"b\\c #{x} %s é\u2028z'
    cfg = {
        "daemon": {"metrics": "127.0.0.1:9477"},
        "bgp": {
            "local_as": 65001,
            "router_id": "198.18.0.2",
            "neighbors": [{"address": "198.18.0.254", "as": 65000}],
            "bird_config": "/run/" + odd.replace('"', "").replace("\\", ""),
            "bird_socket": "/run/x.ctl",
        },
        "interface": [{"name": "xgt0", "protect": ["198.18.0.2"], "events": {"hook": "/bin/echo '" + odd + "'"}}],
    }
    d, _ = loads(tomli_w.dumps(cfg), "x.toml")
    assert d.interfaces[0].events.hook.endswith(odd + "'")
    store.save(d)
    assert store.load() == d


def _strings_of(d: Desired) -> list[str]:
    out = [d.daemon.metrics or ""]
    if d.cluster:
        out += [d.cluster.name, d.cluster.node, *d.cluster.endpoints]
    if d.bgp:
        out += [d.bgp.bird_config, d.bgp.bird_socket, d.bgp.liveness_iface]
    out += [i.events.hook or "" for i in d.interfaces]
    return out


# ---- 2. tracebacks: deep nesting, mixed families in diff, a state file of another shape ----


@pytest.mark.parametrize(
    "text",
    [
        "a = " + "[" * 5000,
        "a = " + "{b = " * 3000 + "1" + "}" * 3000,
        "a = " + "9" * 5000,
        "x = [" * 20 + "1" + "]" * 20,
    ],
)
def test_deep_nesting_and_huge_integers_are_one_problem(text):
    with pytest.raises(ConfigError) as exc:
        loads(text, "x.toml")
    assert len(exc.value.problems) == 1


def test_diff_of_mixed_families():
    old, _ = loads(BASE.replace('["198.18.0.2"]', '["198.18.0.2", "2001:db8::2"]'))
    new, _ = loads(BASE.replace('["198.18.0.2"]', '["198.18.0.3", "2001:db8::3"]'))
    assert [c.text() for c in diff(old, new)] == [
        "+ xgt0 protect: 198.18.0.3, 2001:db8::3",
        "- xgt0 protect: 198.18.0.2, 2001:db8::2",
    ]


def _state_file(text: str) -> Path:
    iface = state.resolve_iface(IF)
    state.netns_state_dir()
    iface.state_file.write_text(text)
    return iface.state_file


@pytest.mark.parametrize(
    "text, needle",
    [
        ('"x"', "must be an object"),
        ("[1, 2]", "must be an object"),
        ('{"levels": "x"}', "levels must be an object"),
        ('{"attack": {"default": {"pps": "x"}}}', "attack.default.pps"),
        ('{"mitigations": {"active": [1]}}', "mitigations.active[0]"),
        ('{"attack": {"hold_s": NaN}}', "attack.hold_s"),
    ],
)
def test_a_state_file_of_another_shape_is_one_error(env, monkeypatch, capsys, text, needle):
    _state_file(text)
    monkeypatch.setattr(
        protection,
        "status",
        lambda name: [
            protection.StatusResult(IF, 7, 1, "skb", ["198.18.0.2"], False, {"block": 0, "allow": 0}, [], {}, True)
        ],
    )
    for argv in (["events", "threshold", "show"], ["status"], ["status", "--json"]):
        assert run(argv) == 2, argv
        one_error(capsys, "state file", "is corrupt", needle)


# ---- 3. export -o --overwrite: no planted temporary followed, only regular files replaced ----


def test_export_overwrite_does_not_follow_a_planted_tmp_symlink(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(reconcile, "export", lambda: reconcile.ExportResult("# state\n", {}))
    victim = tmp_path / "root-only"
    victim.write_text("secret\n")
    out = tmp_path / "out.toml"
    out.write_text("old\n")
    (tmp_path / "out.toml.tmp").symlink_to(victim)
    assert run(["export", "-o", str(out), "--overwrite"]) == 0
    assert victim.read_text() == "secret\n" and out.read_text() == "# state\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.toml", "out.toml.tmp", "root-only"]


def test_export_overwrite_refuses_what_is_not_a_regular_file(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(reconcile, "export", lambda: reconcile.ExportResult("# state\n", {}))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "target")
    (tmp_path / "target").write_text("keep\n")
    assert run(["export", "-o", str(fifo), "--overwrite"]) == 2
    one_error(capsys, "cannot write", "not a regular file")
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link", "target"]  # no temporary left
    assert run(["export", "-o", str(link), "--overwrite"]) == 0  # the link is replaced, never written through
    assert not link.is_symlink() and link.read_text() == "# state\n" and (tmp_path / "target").read_text() == "keep\n"


def test_write_durably_refuses_a_device(tmp_path):
    """(A device node of our own, like /dev/full: a build that replaces it harms nothing.)"""
    dev = tmp_path / "full"
    try:
        os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    with pytest.raises(UserError, match="not a regular file"):
        state.write_durably(dev, b"x")
    assert stat.S_ISCHR(os.lstat(dev).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


# ---- 4. inputs that remove protection need --force ----


@pytest.mark.parametrize(
    "which, cidr", [("block", "0.0.0.0/0"), ("allow", "::/0"), ("allow", "0.0.0.0/0"), ("block", "::/0")]
)
def test_a_list_entry_for_every_address_needs_force(env, monkeypatch, capsys, recorded_calls, which, cidr):
    calls = []
    monkeypatch.setattr(
        reconcile,
        "edit",
        lambda *a, **k: calls.append(a) or protection.ListChangeResult(IF, which, "add", 1, 0, 0, [], []),
    )
    assert run([which, "add", "198.51.100.0/24", cidr]) == 2
    one_error(capsys, cidr, "--force")
    assert calls == [] and recorded_calls == [] and store_bytes() is None
    assert run([which, "add", cidr, "--force"]) == 0
    assert len(calls) == 1


def test_a_list_file_with_an_entry_for_every_address_needs_force(env, capsys, tmp_path):
    f = tmp_path / "l.txt"
    f.write_text("198.51.100.0/24\n0.0.0.0/0\n")
    assert run(["block", "load", str(f)]) == 2
    one_error(capsys, "0.0.0.0/0", "--force")


@pytest.fixture
def live_one(env, monkeypatch):
    """The kernel side of apply: xgt0 is protected; realising records what it was asked."""
    realised = []
    monkeypatch.setattr(reconcile, "export_live", lambda: Desired((S0,)))
    monkeypatch.setattr(reconcile, "management_addresses", lambda: set())
    monkeypatch.setattr(
        reconcile, "realise", lambda spec: realised.append(spec) or reconcile.RealiseResult(spec.name, "changed", [])
    )
    monkeypatch.setattr(reconcile, "_detach_quietly", lambda name: realised.append(("detach", name)) or [])
    return realised


@pytest.mark.parametrize("text", ["", "# nothing here\n", "[daemon]\n"])
def test_a_config_that_removes_every_protection_needs_force(live_one, capsys, tmp_path, text):
    f = tmp_path / "empty.toml"
    f.write_text(text)
    assert run(["apply", "-f", str(f)]) == 2
    one_error(capsys, "removes the protection of xgt0", "--force")
    assert live_one == [] and store_bytes() is None and not store.meta_path().exists()
    assert run(["apply", "-f", str(f), "--dry-run"]) == 0  # the dry run shows what it would do
    assert run(["apply", "-f", str(f), "--force"]) == 0
    assert live_one == [("detach", IF)]
    assert store_bytes() is None and store.load_meta().generation == 1  # the generation stays, to go on from


def test_apply_of_a_new_whole_family_entry_needs_force_but_export_apply_stays_a_no_op(
    live_one, monkeypatch, capsys, tmp_path
):
    f = tmp_path / "c.toml"
    f.write_text(BASE + 'allow = ["::/0"]\n')
    assert run(["apply", "-f", str(f)]) == 2
    one_error(capsys, "::/0", "--force")
    live = Desired((replace(S0, allow=frozenset({parse_prefix("::/0").prefix})),))
    monkeypatch.setattr(reconcile, "export_live", lambda: live)
    f.write_text(to_toml(live))
    assert run(["apply", "-f", str(f)]) == 0
    assert "no changes" in capsys.readouterr().out


# ---- 5. a metrics port of 99999, tcp flags 'syn,!syn' ----


def test_metrics_port_and_contradictory_tcp_flags_are_refused(capsys):
    with pytest.raises(ConfigError, match="daemon.metrics.*99999"):
        loads('[daemon]\nmetrics = "127.0.0.1:99999"\n')
    with pytest.raises(ConfigError, match="given twice"):
        loads(BASE + '[[interface.filter]]\naction = "drop"\ntcp_flags = "syn,!syn"\n')
    with pytest.raises(UserError, match="given twice"):
        policy.parse_tcp_flags("syn,!syn")
    assert policy.parse_tcp_flags("syn,!ack") == (0x12, 0x02)


def test_filter_add_with_contradictory_tcp_flags_is_one_line(env, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(reconcile, "edit", lambda *a, **k: calls.append(a))
    assert run(["filter", "add", "--action", "drop", "--tcp-flags", "syn,!syn"]) == 2
    one_error(capsys, "given twice")
    assert calls == []


# ---- 6. the generation never goes back ----


def test_a_failed_apply_does_not_move_the_generation_back(env, monkeypatch, tmp_path):
    monkeypatch.setattr(reconcile, "export_live", lambda: Desired())
    monkeypatch.setattr(reconcile, "management_addresses", lambda: set())

    def fail(spec):
        raise UserError("kernel said no")

    monkeypatch.setattr(reconcile, "realise", fail)
    monkeypatch.setattr(reconcile, "_detach_quietly", lambda name: [])
    seen = [store.load_meta().generation]
    for _ in range(2):
        with pytest.raises(UserError, match="kernel said no"):
            reconcile.apply_desired(Desired((S0,)))
        seen.append(store.load_meta().generation)
        assert store.load() == Desired()
    assert seen == sorted(set(seen)), seen  # strictly increasing


# ---- 7. apply -f of a FIFO (or anything not a regular file) does not hang ----


def test_apply_of_a_fifo_is_refused_without_blocking(env, capsys, tmp_path):
    fifo = tmp_path / "cfg.fifo"
    os.mkfifo(fifo)
    stop = threading.Event()

    def unblock():  # on a build that opens it, a writer ends each wait after 5 s (and the test fails)
        if stop.wait(5.0):
            return
        while not stop.wait(0.2):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass  # ENXIO: nobody is reading

    t = threading.Thread(target=unblock, daemon=True)
    t.start()
    try:
        for argv in (["apply", "-f", str(fifo)], ["diff", "-f", str(fifo)], ["run", "--config", str(fifo)]):
            assert run(argv) == 2, argv
            one_error(capsys, "not a regular file")
        with pytest.raises(UserError, match="not a regular file"):
            load(fifo)
        assert not stop.is_set()
    finally:
        stop.set()
        t.join()
    for dev in ("/dev/zero", "/dev/null"):
        with pytest.raises(UserError, match="not a regular file"):
            load(dev)
