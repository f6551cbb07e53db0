"""Region (geo) blocking: drop a protected address's traffic by the country of its source.

Desired state: `AddressSpec.geo`, a GeoSpec — the countries a rule names, whether it drops them
(`block`) or drops everything else (`only`), and the mode (`drop`; `cc` = challenge at layer 7
where HAProxy serves the address).

Mode cc: XDP lets those sources' TCP to the address's HTTP ports (XG_PORT_BY_HTTP) through and
still drops the rest of their traffic (geo.h); HAProxy challenges them (l7/haproxy_config.py:
`src,map_ip(geo.map)` gives the longest match's country, as the tries do). The interface record's
"geo" entry lists the cc rules ("cc": address → countries, only), so the L7 engine renders them
whenever it renders HAProxy's configuration (l7_challenges). An address in mode cc without an
HTTP service is allowed (the service may come later, or go while the rule stays): its sources are
dropped in XDP like mode drop, and a note says so.

Realised state (geo.h, abi.h XG_GEO_*): the union of the countries of every rule of the
interface as prefixes in one LPM trie per family (source prefix → country index), each
address's set of countries as a bit set in xg_geoset_arr[its slot], and XG_PROT_GEO on the
address. The record of what the tries hold (database, its stamp, the countries) is kept in the
interface record under "geo", so a reconcile that changes nothing does not reload them.

The country database ships in a Debian package and works offline: IPFire's location database
(libloc-database, read with python3-location). A MaxMind-format file (.mmdb, read with PyPI's
maxminddb >= 2.3: the extra `xdpguard[mmdb]`) may be given instead. XDPGUARD_GEO_DB names the file.
"""

from __future__ import annotations

import collections
import ipaddress
import os
from dataclasses import dataclass, field

from .kernel import abi
from . import state
from .errors import UserError
from .model.geo import MODES, GeoSpec, normal  # noqa: F401 (geo.MODES, geo.normal: their old home)

DEFAULT_DB = "/usr/share/libloc-location/location.db"  # Debian's libloc-database (snapshot 2022-10-29)
DB_ENV = "XDPGUARD_GEO_DB"
STATE_KEY = state.GEO.key  # the old name (reconcile.py spells the key through it)
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# ---- country codes ----


def country_index(code: str) -> int:
    """Index of a two-character code [0-9A-Z] (abi.h): c0 * 36 + c1. "00" (0) is no country."""
    c = code.upper()
    return _ALPHABET.index(c[0]) * 36 + _ALPHABET.index(c[1])


def index_country(i: int) -> str:
    return _ALPHABET[i // 36] + _ALPHABET[i % 36]


def _well_formed(code: str) -> bool:
    return len(code) == 2 and all(ch in _ALPHABET for ch in code.upper()) and code != "00"


def block(g: GeoSpec | None, codes) -> GeoSpec:
    g = g or GeoSpec()
    cs = frozenset(codes)
    return GeoSpec(g.countries - cs if g.only else g.countries | cs, g.only, g.mode)


def allow(g: GeoSpec | None, codes) -> GeoSpec:
    g = g or GeoSpec()
    cs = frozenset(codes)
    return GeoSpec(g.countries | cs if g.only else g.countries - cs, g.only, g.mode)


def only(g: GeoSpec | None, codes) -> GeoSpec:
    return GeoSpec(frozenset(codes), True, (g or GeoSpec()).mode)


def with_mode(g: GeoSpec | None, mode: str) -> GeoSpec:
    g = g or GeoSpec()
    return GeoSpec(g.countries, g.only, mode)


# ---- the database ----


def db_path() -> str:
    return os.environ.get(DB_ENV) or DEFAULT_DB


@dataclass
class GeoDB:
    """A country database: libloc (IPFire location) or MaxMind (.mmdb)."""

    path: str
    kind: str  # "libloc" | "mmdb"
    reader: object
    stamp: str  # changes when the file does (size and mtime)
    _codes: set[str] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | None = None) -> GeoDB:
        path = path or db_path()
        try:
            st = os.stat(path)
        except OSError as exc:
            raise UserError(
                f"geo database {path}: {exc.strerror.lower() if exc.strerror else exc}; install "
                f"libloc-database (scripts/setup.sh) or set {DB_ENV} to a location.db or .mmdb file"
            ) from None
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
        with open(path, "rb") as f:
            head = f.read(7)
        if head == b"LOCDBXX":
            try:
                import location  # Debian's python3-location: lazy like bcc
            except ImportError:
                raise UserError("reading a location database needs python3-location: run scripts/setup.sh") from None
            try:
                return cls(path, "libloc", location.Database(path), stamp)
            except Exception as exc:
                raise UserError(f"geo database {path}: cannot read it ({exc})") from None
        try:
            import maxminddb
            from maxminddb.reader import Reader
        except ImportError:
            raise UserError("reading a MaxMind database needs maxminddb >= 2.3: pip install 'xdpguard[mmdb]'") from None
        if not hasattr(Reader, "__iter__"):  # Debian 12's python3-maxminddb (2.2) cannot list networks
            raise UserError(
                "listing the networks of a MaxMind database needs maxminddb >= 2.3: pip install 'xdpguard[mmdb]'"
            )
        try:
            return cls(path, "mmdb", maxminddb.open_database(path), stamp)
        except Exception as exc:
            raise UserError(f"geo database {path}: neither a location database nor a MaxMind file ({exc})") from None

    def describe(self) -> str:
        if self.kind == "libloc":
            import datetime

            when = datetime.datetime.fromtimestamp(self.reader.created_at, datetime.timezone.utc).date()
            return f"{self.path} ({self.reader.vendor}, {when})"
        meta = self.reader.metadata()
        import datetime

        when = datetime.datetime.fromtimestamp(meta.build_epoch, datetime.timezone.utc).date()
        return f"{self.path} ({meta.database_type}, {when})"

    def codes(self) -> set[str]:
        if self._codes is None:
            if self.kind == "libloc":
                self._codes = {c.code.upper() for c in self.reader.countries}
            else:
                self._codes = {cc for _, cc in self._mmdb_all()}
        return self._codes

    def _mmdb_all(self):
        for net, rec in self.reader:
            cc = _mmdb_country(rec)
            if cc:
                yield net, cc

    def lookup(self, addr) -> str | None:
        a = str(addr)
        if self.kind == "libloc":
            try:
                n = self.reader.lookup(a)
            except FileNotFoundError:  # libloc 0.9.16 says "no network" this way for some addresses (198.18.0.1)
                return None
            return (n.country_code or None) if n is not None else None
        return _mmdb_country(self.reader.get(a))

    def networks(self, codes) -> list[tuple[int, bytes, int, str]]:
        """(family, address bytes, prefix length, country) of every network of these countries.
        Nested networks are kept: the trie's longest match gives the most specific one."""
        want = {c.upper() for c in codes}
        out = []
        if not want:
            return out
        if self.kind == "libloc":
            for n in self.reader.search_networks(country_codes=sorted(want)):
                net = ipaddress.ip_network(str(n))
                out.append((net.version, net.network_address.packed, net.prefixlen, n.country_code.upper()))
        else:
            for net, cc in self._mmdb_all():
                if cc in want:
                    if net.version == 6 and net.subnet_of(ipaddress.ip_network("::ffff:0:0/96")):
                        continue  # the IPv4 tree seen through IPv6: already listed as IPv4
                    out.append((net.version, net.network_address.packed, net.prefixlen, cc))
        return out


def _mmdb_country(rec) -> str | None:
    if not isinstance(rec, dict):
        return None
    for k in ("country", "registered_country"):
        c = rec.get(k)
        if isinstance(c, dict) and isinstance(c.get("iso_code"), str):
            return c["iso_code"].upper()
    return None


def check_codes(codes, db: GeoDB) -> list[str]:
    """Upper-cased codes; an unknown one is a UserError naming it."""
    out = []
    for c in codes:
        if not _well_formed(c):
            raise UserError(f"'{c}' is not a country code: give two letters (ISO 3166-1), e.g. DE")
        if c.upper() not in db.codes():
            raise UserError(f"unknown country code '{c.upper()}': not in the geo database {db.path}")
        out.append(c.upper())
    if not out:
        raise UserError("give at least one country code")
    return out


def check_management(addr_specs, db: GeoDB, mgmt) -> None:
    """Refuse a rule that drops a management address of this host (by its country)."""
    for a in addr_specs:
        g = getattr(a, "geo", None)
        if g is None or not g.active():
            continue
        for m in mgmt:
            cc = db.lookup(m)
            dropped = (cc not in g.countries) if g.only else (cc in g.countries)
            if dropped:
                raise UserError(
                    f"the geo rule of {a.address} would drop this host's management address {m} "
                    f"({cc or 'no known country'}); use --force if you mean it"
                )


# ---- realised state ----


def _set_bits(g: GeoSpec) -> abi.GeoSet:
    s = abi.GeoSet()
    s.flags = (abi.GEO_ONLY if g.only else 0) | (abi.GEO_CC if g.mode == "cc" else 0)
    for c in g.countries:
        i = country_index(c)
        s.bits[i >> 6] |= 1 << (i & 63)
    return s


@dataclass(frozen=True)
class LoadResult:
    database: str
    countries: list[str]
    prefixes4: int
    prefixes6: int
    seconds: float
    reloaded: bool


def realise(g, addresses, st: dict) -> tuple[dict, list[str]]:
    """Write every address's rule and the tries for their union. `st` is the interface record;
    returns its new "geo" entry and notes. The tries are reloaded only when the union of
    countries or the database changed (or the tries are empty while they should not be)."""
    union = sorted({c for a in addresses if a.geo is not None for c in a.geo.countries})
    active = [a for a in addresses if a.geo is not None and a.geo.active()]
    rec = state.get(st, state.GEO)
    if active:
        db = GeoDB.open(rec.get("database") if rec.get("database") and not os.environ.get(DB_ENV) else None)
        want = {"database": db.path, "stamp": db.stamp, "countries": union}
        empty = union and g.geo_tries_empty()
        if {k: rec.get(k) for k in want} != want or empty:
            g.load_geo_tries(db, union)
        cc = {
            str(a.address): {"countries": sorted(a.geo.countries), "only": a.geo.only}
            for a in active
            if a.geo.mode == "cc"
        }
        rec = {**want, "cc": cc} if cc else want
    notes = cc_notes(addresses)
    # the rule of each address (the tries already hold its countries)
    for a in addresses:
        g.write_geo(a.address, a.geo)
    if not active and rec:
        g.clear_geo_tries()
        rec = {}
    return rec, notes


def cc_notes(addresses) -> list[str]:
    """What mode cc does on each address that has it (AddressSpec: .geo, .http)."""
    out = []
    for a in addresses:
        if a.geo is None or not a.geo.active() or a.geo.mode != "cc":
            continue
        ports = sorted({svc.port for svc in getattr(a, "http", ())})
        if ports:
            out.append(
                f"geo mode cc on {a.address}: HAProxy challenges those sources on tcp "
                f"{', '.join(map(str, ports))}; the rest of their traffic is dropped in XDP"
            )
        else:
            out.append(
                f"geo mode cc on {a.address}: no HTTP service there, so those sources are dropped in XDP "
                "(the challenge applies once HAProxy serves the address)"
            )
    return out


# ---- mode cc at layer 7: what HAProxy's configuration needs (l7/engine.py renders it) ----


def l7_rules(states: dict[str, dict]) -> dict[str, tuple[GeoSpec, str | None, list[str]]]:
    """Listen address → (its cc rule, the database of its interface's tries, their countries),
    from the interface records (name → record)."""
    out = {}
    for _, st in sorted(states.items()):
        rec = state.get(st, state.GEO)
        for addr, r in (rec.get("cc") or {}).items():
            out[addr] = (
                GeoSpec(frozenset(r.get("countries", ())), bool(r.get("only")), "cc"),
                rec.get("database"),
                list(rec.get("countries") or ()),
            )
    return out


def l7_map(db: GeoDB, countries) -> str:
    """HAProxy map file text: one `PREFIX CC` line per network of these countries (HAProxy's
    map_ip takes the longest match, as the tries do)."""
    lines = []
    for fam, raw, plen, cc in sorted(db.networks(countries)):
        lines.append(f"{ipaddress.ip_address(raw)}/{plen} {cc}")
    return "\n".join(lines) + ("\n" if lines else "")


def l7_challenges(listen_addresses, states: dict[str, dict] | None = None) -> tuple[dict[str, GeoSpec], str]:
    """The cc rules of these listen addresses and the map file of their countries; ({}, "")
    when none has one (no database is opened then)."""
    if states is None:
        states = {}
        for name in state.protected_ifaces():
            st = state.read_state(state.Iface(name, 0, state.netns_key()))
            if st is not None:
                states[name] = st
    found = l7_rules(states)
    rules = {str(a): found[str(a)] for a in listen_addresses if str(a) in found}
    if not rules:
        return {}, ""
    path = next((p for _, p, _ in rules.values() if p), None)
    db = GeoDB.open(None if os.environ.get(DB_ENV) else path)
    union = sorted(
        {c for _, _, cs in rules.values() for c in cs} | {c for g, _, _ in rules.values() for c in g.countries}
    )
    return {a: g for a, (g, _, _) in rules.items()}, l7_map(db, union)


# ---- countries of sampled traffic (no per-packet cost: the controller looks up sampled sources) ----


class CountryOf:
    """Source address → country code ("??" unknown), through the geo database, with a bounded
    cache (a flood's samples repeat sources). Without a database every source is "??" and
    `available` is False."""

    CACHE_MAX = 65536

    def __init__(self, db: GeoDB | None = None):
        if db is None:
            try:
                db = GeoDB.open()
            except UserError:
                db = None
        self.db = db
        self.cache: dict[str, str] = {}

    @property
    def available(self) -> bool:
        return self.db is not None

    def __call__(self, src: str) -> str:
        cc = self.cache.get(src)
        if cc is None:
            if len(self.cache) >= self.CACHE_MAX:
                self.cache.clear()
            try:
                cc = (self.db.lookup(src) if self.db is not None else None) or "??"
            except ValueError:
                cc = "??"
            self.cache[src] = cc
        return cc


def top_countries(samples, db: GeoDB | None = None, n: int = 10) -> dict[str, list[tuple[str, int]]]:
    """{"dropped": [(country, packets)], "passed": [...]} from (src address, dropped, weight)
    samples; the weight is the sample's 1-in-N."""
    of = CountryOf(db)
    acc = {"dropped": collections.Counter(), "passed": collections.Counter()}
    for src, dropped, weight in samples:
        acc["dropped" if dropped else "passed"][of(src)] += weight
    return {k: v.most_common(n) for k, v in acc.items()}


OTHER = "other"  # the country label of everything past the first COUNTRY_LABELS of an (iface, action)
COUNTRY_LABELS = 10


class CountryTally:
    """Cumulative estimated packets by (iface, action, country) from the daemon's samples: each
    sample stands for its 1-in-N (xdpguard_country_packets_total).

    The label set is bounded: per (iface, action) at most `labels` countries get their own series,
    the rest is counted as "other". A country gets a label at a snapshot (a scrape) while labels
    are free, the largest first, and keeps it: every series only grows (a counter), whatever the
    ranking does later. A country labelled after "other" was first exported carries what "other"
    had already counted of it as an offset, so neither series steps back."""

    def __init__(self, of: CountryOf | None = None, labels: int = COUNTRY_LABELS):
        self.of = of or CountryOf()
        self.counts: collections.Counter = collections.Counter()
        self.labels = labels
        self._labelled: dict[tuple[str, str], dict[str, int]] = {}  # (iface, action) → country → offset
        self._shown: set[tuple[str, str]] = set()  # (iface, action) whose "other" was exported

    def feed(self, iface: str, samples) -> None:
        if not self.of.available:
            return
        for s in samples:
            if s.family and s.reason != "bypass":
                self.counts[(iface, "drop" if s.dropped else "pass", self.of(s.src))] += s.sample_every

    def snapshot(self) -> dict[tuple[str, str, str], int]:
        """(iface, action, country or "other") → packets, at most `labels` + 1 per (iface, action)."""
        groups: dict[tuple[str, str], dict[str, int]] = {}
        for (iface, action, cc), n in self.counts.items():
            groups.setdefault((iface, action), {})[cc] = n
        out: dict[tuple[str, str, str], int] = {}
        for g, by_cc in sorted(groups.items()):
            lab = self._labelled.setdefault(g, {})
            free = sorted((cc for cc in by_cc if cc not in lab), key=lambda cc: (-by_cc[cc], cc))
            for cc in free[: max(0, self.labels - len(lab))]:
                lab[cc] = by_cc[cc] if g in self._shown else 0
            other = sum(n for cc, n in by_cc.items() if cc not in lab) + sum(lab.values())
            for cc, offset in lab.items():
                out[(*g, cc)] = by_cc.get(cc, 0) - offset
            if other or g in self._shown:
                out[(*g, OTHER)] = other
                self._shown.add(g)
        return out


def db_info() -> str:
    try:
        return GeoDB.open().describe()
    except UserError as exc:
        return exc.message
