"""The namespace's HAProxy as the reconciler sees it: desired HTTP services → a running HAProxy.

One HAProxy per network namespace serves every HTTP service of every protected interface of
the namespace, from `<run dir>/l7/<netns key>`; the challenge secret lives in
`<state dir>/<netns key>/l7.secret` (0600, kept across restarts: a verified browser stays
verified). On a cluster node `cluster run` writes the cluster's secret there (set_secrets), the
same on every node (a cookie issued by one node passes on the others), and keeps the last one it
had while the store is unreachable.

    realise(services)   render + `haproxy -c` + start or reload; stop it when there is none
    secrets()           the challenge secret (made on first use); set_secrets(s) replaces it
    ensure(services)    the daemon's tick: restart a dead HAProxy, install one after a reboot
    services_of(states) the services the interface records hold (what is realised)
    set_peering(cluster) `cluster run`: the nodes its HAProxy shares the stick tables with

In a cluster whose `[cluster] peers` names the nodes, every stick table is shared with them
(haproxy_config.Peering): `cluster run` records them in `<state dir>/<netns key>/l7.peering`,
which every rendering of this namespace's HAProxy reads (a CLI verb renders what the agent does).
With the cluster's cert/key/ca the peer sessions are TLS (the bundle `tls/peers.pem` in the run dir).
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from .. import geo, state
from ..errors import UserError
from . import schema
from ..model.cluster import ClusterSpec
from .haproxy_config import PeerNode, Peering, render
from .proc import Haproxy, tls_files
from .secret import SECRET_BYTES, Secrets, from_json, new_key, to_json
from .runtime import RuntimeApiError, StatRow, show_stat
from .spec import HttpService

HTTP_KEY = "http"  # the interface record's list: schema.to_data(svc) + {"address": "..."}
SECRET_FILE = "l7.secret"
PEERING_FILE = "l7.peering"  # not *.json: that suffix is an interface record (state.protected_ifaces)
PEERS_BUNDLE = "tls/peers.pem"  # the peers' certificate + key, in the run dir


def run_dir() -> Path:
    return state.run_root() / "l7" / state.netns_key()


def secret_path() -> Path:
    return state.netns_state_dir() / SECRET_FILE


def _read_secrets() -> Secrets | None:
    path = secret_path()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UserError(f"cannot read the challenge secret {path}: {exc.strerror or exc}") from None
    if len(data) == SECRET_BYTES:
        return Secrets(data)
    return from_json(data, str(path))


def secrets() -> Secrets:
    """This namespace's challenge secret, made on first use. The file is the secret's JSON
    (secret.to_json); a file of exactly SECRET_BYTES is the raw key older versions wrote."""
    s = _read_secrets()
    if s is None:
        s = Secrets(new_key())
        set_secrets(s)
    return s


def set_secrets(s: Secrets) -> bool:
    """Keep `s` as this namespace's challenge secret (0600, fsynced); True when that changed it.
    The caller realises again (a reload: the stick tables stay)."""
    try:
        if _read_secrets() == s:
            return False
    except UserError:
        pass  # unreadable: replaced
    state.write_durably(secret_path(), (to_json(s) + "\n").encode())
    return True


def peering_path() -> Path:
    return state.netns_state_dir() / PEERING_FILE


def set_peering(cluster: ClusterSpec | None) -> bool:
    """Record the nodes this namespace's HAProxy shares its stick tables with (`[cluster] peers`;
    none: forget them). True when that changed what is recorded (the caller realises again)."""
    path = peering_path()
    if cluster is None or not cluster.peers:
        if not path.exists():
            return False
        path.unlink()
        return True
    data = {
        "local": cluster.node,
        "port": cluster.peer_port,
        "nodes": [list(item.split("=", 1)) for item in cluster.peers],
        "cert": cluster.cert,
        "key": cluster.key,
        "ca": cluster.ca,
    }
    text = json.dumps(data, sort_keys=True) + "\n"
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


def peering(run: Path) -> tuple[Peering | None, dict[str, str]]:
    """The recorded peering (None: the tables are this node's own) and the files it needs."""
    try:
        data = json.loads(peering_path().read_text())
    except FileNotFoundError:
        return None, {}
    except (OSError, ValueError) as exc:
        raise UserError(f"{peering_path()}: unreadable ({exc}); run `cluster run` again") from None
    try:
        nodes = tuple(PeerNode(n, ipaddress.ip_address(a), int(data["port"])) for n, a in data["nodes"])
        files: dict[str, str] = {}
        crt = ca = None
        if data.get("cert") and data.get("key") and data.get("ca"):
            if not server_usable(data["cert"]):
                raise UserError(
                    f"{data['cert']}: HAProxy peers use the node's certificate as a TLS server too, and "
                    "its extended key usage is clientAuth only; issue it with serverAuth,clientAuth"
                )
            files[PEERS_BUNDLE] = Path(data["cert"]).read_text() + Path(data["key"]).read_text()
            # relative to the configuration (as a service's bundle): `haproxy -c` checks it in its
            # staging directory, where the bundle is before it is installed in the run dir
            crt, ca = PEERS_BUNDLE, data["ca"]
        return Peering(data["local"], nodes, crt=crt, ca=ca), files
    except OSError as exc:
        raise UserError(f"cannot read the cluster's TLS files for HAProxy peers: {exc.strerror or exc}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{peering_path()}: bad peering record ({exc}); run `cluster run` again") from None


def server_usable(cert: str) -> bool:
    """Whether `cert` may serve TLS: a peer connects to the others as a client *and* accepts
    them as a server, with the same certificate, and OpenSSL refuses a server certificate whose
    extended key usage is only clientAuth (measured: with such etcd client certificates the
    sessions fail and every node counts alone). Without an extended key usage: any use."""
    try:
        p = subprocess.run(
            ["openssl", "x509", "-in", cert, "-noout", "-ext", "extendedKeyUsage"],
            capture_output=True,
            text=True,
            timeout=10,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return True  # no openssl here: HAProxy's own check decides
    if p.returncode != 0:
        return True
    return "Extended Key Usage" not in p.stdout or "TLS Web Server Authentication" in p.stdout


def haproxy() -> Haproxy:
    return Haproxy(run_dir())


def record(services: Iterable[HttpService]) -> list[dict]:
    """The interface record's form of `services` (one entry per listen address)."""
    return [{"address": str(a), **schema.to_data(svc)} for svc in services for a in svc.listen]


def from_record(iface: str, items) -> dict:
    """Interface record list → {address: (HttpService, ...)}."""
    out: dict = {}
    for d in items or []:
        try:
            addr = ipaddress.ip_address(d["address"])
            svc = schema.from_data({k: v for k, v in d.items() if k != "address"}, addr)
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"state of {iface}: bad HTTP service {d!r:.80}: {exc}") from None
        except UserError as exc:
            raise UserError(f"state of {iface}: HTTP service {d.get('name')!r}: {exc.message}") from None
        out.setdefault(addr, []).append(svc)
    return {a: tuple(sorted(v, key=lambda s: (s.port, s.name))) for a, v in out.items()}


def services_of(states: dict[str, dict]) -> list[HttpService]:
    """Every HTTP service of these interface records (name → record)."""
    out: list[HttpService] = []
    for name, st in sorted(states.items()):
        for svcs in from_record(name, (st or {}).get(HTTP_KEY)).values():
            out += svcs
    return out


def realise(services: Sequence[HttpService]) -> str:
    """Make the namespace's HAProxy serve exactly `services`: 'started', 'reloaded', 'unchanged',
    'stopped' or 'none'. A configuration HAProxy refuses raises HaproxyConfigError (a UserError)
    and changes nothing."""
    h = haproxy()
    if not services:
        if h.master_pid() is None and not h.config.exists():
            return "none"
        h.stop()
        h.config.unlink(missing_ok=True)
        return "stopped"
    h.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    geo_rules, geo_map = geo.l7_challenges(a for svc in services for a in svc.listen)  # geo rules in mode cc
    peers, peer_files = peering(h.run_dir)
    keys = secrets()
    try:
        rendered = render(
            services,
            run_dir=str(h.run_dir),
            secret=keys.current,
            old_secret=keys.checking(time.time()),
            geo_rules=geo_rules,
            geo_map=geo_map,
            peering=peers,
        )
    except ValueError as exc:
        if peers is None:
            raise
        raise UserError(str(exc)) from None  # the peering against the services (a protective address)
    return h.apply(rendered, {**tls_files(services), **peer_files})


def ensure(services: Sequence[HttpService]) -> str:
    """Drift repair: 'ok', 'restarted' (it had died), 'started' (nothing installed: after a
    reboot), 'stopped' or 'none'."""
    h = haproxy()
    if not services:
        return realise(services)
    got = h.ensure()
    if got == "absent":
        return realise(services)
    return got


def stats() -> list[StatRow]:
    """`show stat` of the namespace's HAProxy; [] when none runs."""
    h = haproxy()
    if not h.admin_socket.exists():
        return []
    try:
        return show_stat(str(h.admin_socket))
    except RuntimeApiError:
        return []
