"""Issue 29 item 7: one challenge secret for the whole cluster — the value (l7/secret.py), the
namespace's file (engine.secrets / set_secrets), HAProxy checking cookies under the previous key
after a rotation (haproxy_config), and the store's create-if-absent and rotation transactions
(cluster/store.py) against a fake etcd that keeps the revisions etcd keeps."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from xdpguard.core.cluster import store
from xdpguard.core.errors import UserError
from xdpguard.core.l7 import engine
from xdpguard.core.l7 import haproxy_config as hc
from xdpguard.core.l7 import secret as S
from xdpguard.core.l7.spec import HttpService
from xdpguard.core.model.cluster import ClusterSpec

RUN_DIR = "/run/xdpguard/l7/test"


def _svc(**kw) -> HttpService:
    return HttpService(**{"name": "web", "listen": ["198.18.0.1"], "backends": ["198.18.1.2:80"], **kw})


def test_value_round_trip_rotation_and_expiry():
    a = S.Secrets(S.new_key())
    assert S.from_json(S.to_json(a), "x") == a and a.checking(time.time()) is None
    now = 1_800_000_000.0
    b = S.rotated(a, now, 3600)
    assert b.current != a.current and b.previous == a.current and b.previous_until == now + 3600
    assert S.from_json(S.to_json(b).encode(), "x") == b
    assert b.checking(now + 3599) == a.current and b.checking(now + 3600) is None  # a cookie lifetime, no more
    assert a.current.hex() not in repr(b) and b.current.hex() not in repr(b)  # never in a log line
    assert S.cookie_lifetime([_svc(), _svc(name="api", challenge_ttl_s=7200)]) == 7200
    assert S.cookie_lifetime([]) == HttpService.challenge_ttl_s


@pytest.mark.parametrize(
    "value",
    [
        b"[1]",
        b"{}",
        b'{"current": "not base64!"}',
        json.dumps({"current": base64.b64encode(b"short").decode()}).encode(),
        json.dumps({"current": base64.b64encode(b"k" * 32).decode(), "previous": 7}).encode(),
        json.dumps({"current": base64.b64encode(b"k" * 32).decode(), "previous_until": "soon"}).encode(),
        b"\xff\xfe",
    ],
)
def test_bad_values_are_one_error_naming_where(value):
    with pytest.raises(UserError, match=r"^etcd:k: not a challenge secret") as ei:
        S.from_json(value, "etcd:k")
    assert base64.b64encode(b"k" * 32).decode() not in ei.value.message
    with pytest.raises(store.Rejected):
        store.parse_secret("k", value)


def test_the_namespace_file_is_private_made_once_and_reads_the_old_raw_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDPGUARD_STATE_DIR", str(tmp_path))
    first = engine.secrets()
    path = engine.secret_path()
    assert path.stat().st_mode & 0o777 == 0o600 and engine.secrets() == first
    assert engine.set_secrets(first) is False  # unchanged: no realise needed
    rot = S.rotated(first, time.time(), 60)
    assert engine.set_secrets(rot) is True and engine.secrets() == rot
    assert path.stat().st_mode & 0o777 == 0o600
    raw = os.urandom(S.SECRET_BYTES)  # what older versions wrote: the key itself
    path.write_bytes(raw)
    assert engine.secrets() == S.Secrets(raw)


def _cookie(key: bytes, src: str, exp: int) -> str:
    return hmac.new(key, f"{src}|{exp}|c".encode(), hashlib.sha256).hexdigest()


def test_haproxy_checks_cookies_under_the_previous_key_too(tmp_path):
    cur, old = S.new_key(), S.new_key()
    plain = hc.render([_svc()], run_dir=RUN_DIR, secret=cur)
    both = hc.render([_svc()], run_dir=RUN_DIR, secret=cur, old_secret=old)
    assert "xg_key0" not in plain.text  # no rotation: one HMAC a request, as before
    assert f"set-var proc.xg_key0 str({base64.b64encode(old).decode()})" in both.text
    line = next(ln for ln in both.text.splitlines() if "proc.xg_key0),hex" in ln)
    assert line.strip().startswith("http-request set-var(txn.xg_cwant)") and line.endswith("if xg_ok !xg_mac")
    # it comes after the current key's check and before the verdict that reads it
    lines = both.text.splitlines()
    at = lines.index(line)
    assert "hmac(sha256,proc.xg_key),hex" in lines[at - 4] and "set-var(txn.xg_ok) int(1)" in lines[at + 1]
    # the previous key never signs: the challenge's new cookie uses the current one
    assert all("xg_key0" not in ln for ln in lines if "xg_nmac" in ln)
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.path.exists(exe):
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("haproxy is not installed (scripts/setup.sh installs it)")
        pytest.skip("haproxy is not installed")
    for name, text in both.files.items():
        (tmp_path / name).write_text(text)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(both.text)
    p = subprocess.run([exe, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr


class FakeEtcd:
    """/kv/txn, /kv/range and /kv/put on one key space with create and mod revisions."""

    def __init__(self):
        self.rev = 1
        self.kv: dict[str, tuple[bytes, int, int]] = {}  # key → (value, create, mod)

    def _kv(self, k: str) -> dict:
        v, c, m = self.kv[k]
        return {"key": k, "value": base64.b64encode(v).decode(), "create_revision": str(c), "mod_revision": str(m)}

    def _put(self, k: str, v: str) -> None:
        self.rev += 1
        old = self.kv.get(k)
        self.kv[k] = (base64.b64decode(v), old[1] if old else self.rev, self.rev)

    def post(self, path: str, body: dict) -> dict:
        head = {"header": {"revision": str(self.rev)}}
        if path == "/kv/range":
            k = body["key"]
            return {**head, "kvs": [self._kv(k)] if k in self.kv else []}
        if path == "/kv/put":
            self._put(body["key"], body["value"])
            return {"header": {"revision": str(self.rev)}}
        assert path == "/kv/txn", path
        ok = True
        for c in body["compare"]:
            got = self.kv.get(c["key"])
            if c["target"] == "CREATE":
                ok &= (got[1] if got else 0) == int(c["create_revision"])
            else:
                ok &= got is not None and got[2] == int(c["mod_revision"])
        out = []
        for op in body["success" if ok else "failure"]:
            if "request_put" in op:
                self._put(op["request_put"]["key"], op["request_put"]["value"])
                out.append({"response_put": {}})
            else:
                k = op["request_range"]["key"]
                out.append({"response_range": {"kvs": [self._kv(k)] if k in self.kv else []}})
        return {"header": {"revision": str(self.rev)}, "responses": out, **({"succeeded": True} if ok else {})}


def _stores(n: int) -> tuple[FakeEtcd, list[store.ClusterStore]]:
    etcd = FakeEtcd()
    out = []
    for i in range(n):
        st = store.ClusterStore(ClusterSpec("lab", f"n{i}", ("http://198.18.4.2:2379",), insecure=True))
        st._post = etcd.post
        out.append(st)
    return etcd, out


def test_the_store_secret_is_created_once_and_rotation_keeps_the_previous():
    etcd, (a, b) = _stores(2)
    ka, kb = S.Secrets(S.new_key()), S.Secrets(S.new_key())
    assert a.create_secret(ka) == (ka, True)
    assert b.create_secret(kb) == (ka, False)  # the first node's wins; b takes it
    key = base64.b64encode(b"/xdpguard/lab/state/secret/l7").decode()
    assert a.classify("/xdpguard/lab/state/secret/l7")[0] == "secret"
    now = 1_800_000_000.0
    new, rev = b.rotate_secret(3600, now=now)
    assert new.previous == ka.current and new.previous_until == now + 3600 and rev == etcd.rev
    assert store.parse_secret("k", etcd.kv[key][0]) == new
    again, _ = a.rotate_secret(3600, now=now + 1)  # a second rotation: one more step, nothing lost
    assert again.previous == new.current
    assert b.create_secret(kb) == (again, False)  # never overwritten by a create


def test_a_rotation_that_loses_the_race_reads_again():
    etcd, (a,) = _stores(1)
    a.create_secret(S.Secrets(S.new_key()))
    real = etcd.post
    raced = []

    def post(path, body):
        if path == "/kv/txn" and not raced:  # another node rotates between our read and our write
            raced.append(S.rotated(store.parse_secret("k", next(iter(etcd.kv.values()))[0]), 0, 60))
            real(
                "/kv/put",
                {"key": body["compare"][0]["key"], "value": base64.b64encode(S.to_json(raced[0]).encode()).decode()},
            )
        return real(path, body)

    a._post = post
    new, _ = a.rotate_secret(3600)
    assert new.previous == raced[0].current  # built on the other node's rotation, not over it


def test_a_node_takes_the_clusters_secret_and_renders_haproxy_again(tmp_path, monkeypatch):
    from xdpguard.core.cluster import node as cnode

    monkeypatch.setenv("XDPGUARD_STATE_DIR", str(tmp_path))
    realised = []
    monkeypatch.setattr(cnode.l7engine, "realise", lambda svcs: realised.append(list(svcs)) or "reloaded")
    monkeypatch.setattr(cnode.l7engine, "services_of", lambda states: [])
    monkeypatch.setattr(cnode.forward, "_iface_states", lambda: {})
    etcd, (st,) = _stores(1)
    agent = cnode.NodeAgent.__new__(cnode.NodeAgent)
    agent.store, agent.report, agent._said, agent._secret_until = st, (lambda m: None), {}, 0.0
    own = engine.secrets()
    agent.take_secret(None)  # none in the store: this node's own becomes the cluster's
    assert st.create_secret(S.Secrets(S.new_key()))[0] == own and realised == []  # nothing changed here
    cluster = S.rotated(own, time.time(), 60)
    agent.take_secret(cluster)
    assert engine.secrets() == cluster and len(realised) == 1
    agent.take_secret(cluster)
    assert len(realised) == 1  # the same secret again: no reload
    engine.set_secrets(S.Secrets(cluster.current, cluster.previous, time.time() - 1))  # the previous key's time is up
    agent._realise_l7(False)
    assert len(realised) == 2  # rendered once more, without it


def test_a_damaged_store_secret_is_skipped_and_the_node_keeps_its_own(tmp_path, monkeypatch):
    from xdpguard.core.cluster import node as cnode

    monkeypatch.setenv("XDPGUARD_STATE_DIR", str(tmp_path))
    etcd, (st,) = _stores(1)
    etcd.post("/kv/put", {"key": base64.b64encode(b"/xdpguard/lab/state/secret/l7").decode(), "value": "e2JhZA=="})
    said = []
    agent = cnode.NodeAgent.__new__(cnode.NodeAgent)
    agent.store, agent.report, agent._said, agent._secret_until = st, said.append, {}, 0.0
    own = engine.secrets()
    agent.take_secret(None)  # the store's value ({bad) does not read: skipped, never fatal
    assert engine.secrets() == own and any("not a challenge secret" in m and "keeping this node's" in m for m in said)


def test_store_reads_the_secret_with_the_rest(monkeypatch):
    etcd, (st,) = _stores(1)
    k = S.Secrets(S.new_key())
    st.create_secret(k)

    def post(path, body):  # a prefix range: every key from key to range_end
        if path == "/kv/range" and "range_end" in body:
            lo, hi = (base64.b64decode(body[x]).decode() for x in ("key", "range_end"))
            kvs = [etcd._kv(key) for key in sorted(etcd.kv) if lo <= base64.b64decode(key).decode() < hi]
            return {"header": {"revision": str(etcd.rev)}, "kvs": kvs}
        return etcd.post(path, body)

    st._post = post
    snap = st.read()
    assert snap.secret == k and snap.desired == {} and snap.rejected == {}
    etcd.kv[next(iter(etcd.kv))] = (b"{bad", 1, etcd.rev)
    snap = st.read()
    assert snap.secret is None and any(key.endswith("state/secret/l7") for key in snap.rejected)


def test_cluster_rotate_secret_is_a_verb(tmp_path: Path):
    from click.testing import CliRunner

    from xdpguard.cli.main import cli

    r = CliRunner().invoke(cli, ["cluster", "rotate-secret", "--help"])
    assert r.exit_code == 0 and "challenge secret" in r.output
