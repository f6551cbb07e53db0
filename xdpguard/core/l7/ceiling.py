"""The service ceiling that follows each domain's peacetime (issue 29, stop 33).

The service ceiling (haproxy_config._service_ceiling) is the number of unverified requests per
second a domain takes before every unverified source is challenged. A level gives it as a fixed
number (50/s at normal); a domain whose peacetime is 2 unverified requests a second hands the
first second of a flood 50 requests, a busy one is in surge all day. With this, `xdpguard run`
learns each domain's unverified rate while it is not in surge and sets its ceiling to

    clamp(FACTOR × peak, MIN_PER_S, MAX_OF_LEVEL × the level's ceiling)

where `peak` is the highest rate seen in peacetime, held PEAK_HOLD_S, then decaying by half
every PEAK_HALF_LIFE_S.
Before WARMUP_S of readings (a restart, a new domain) there is no baseline and the level's
number is used as it is: the floor before any baseline. Readings taken in a surge are not
learned (the flood), a reading above the ceiling in force starts the surge, and once in force the
learned peak at most doubles every DOUBLE_S: bots that ramp up slowly under the ceiling need hours
to lift it, and never above its cap. An operator's own `service_rate` is kept as it is.

HAProxy reads the ceiling from a map (CEILING_MAP: domain key → requests/s) whose default is
the level's number; the daemon writes a learned one through the runtime API (`set map` / `add
map`: no reload, the stick tables stay) and writes it again after HAProxy restarts or reloads
(the map is read back every tick). Pure but for `sync`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import haproxy_config as hc
from . import runtime
from .spec import HttpService

WARMUP_S = 300.0  # peacetime readings for this long before a domain's baseline is used
FACTOR = 4.0  # the ceiling: this many times the peacetime peak …
MIN_PER_S = 10  # … never below this many unverified requests/s …
MAX_OF_LEVEL = 4  # … nor above this many times the level's ceiling
PEAK_HALF_LIFE_S = 1800.0
PEAK_HOLD_S = 600.0  # the peak holds this long after it was last seen before it decays
DOUBLE_S = 3600.0  # once in force, the learned peak at most doubles this often


@dataclass
class _Domain:
    first: float  # when its first peacetime reading came
    peak: float = 0.0
    at: float = 0.0  # when `peak` was last seen (its hold, then its decay, count from here)
    pending: tuple[float, float] | None = None  # the last reading (rate, when): learned at the next


@dataclass
class Ceilings:
    """Per (service, domain key): what peacetime looked like, and the ceiling it gives."""

    warmup_s: float = WARMUP_S
    domains: dict[tuple[str, str], _Domain] = field(default_factory=dict)
    served: dict[str, dict[str, int]] = field(default_factory=dict)  # service → what its map holds since `sync`

    def learn(self, service: str, key: str, rate: float, surging: bool, now: float) -> None:
        """One reading of a domain's unverified requests/s (HAProxy's 1 s rate). It is learned
        at the next reading, if that one is not in a surge either: a flood's first fraction of
        a second, read before its rate crossed the ceiling, is not peacetime."""
        d = self.domains.get((service, key))
        if surging:
            if d is not None:
                d.pending = None
            return
        if d is None:
            d = self.domains[(service, key)] = _Domain(now, 0.0, now)
        if d.pending is not None:
            self._take(d, *d.pending)
        d.pending = (float(rate), now)

    def _take(self, d: _Domain, rate: float, now: float) -> None:
        was = self.decayed(d, now)
        if now - d.first >= self.warmup_s:  # in force: it may rise only so fast (a slow ramp of bots)
            rate = min(rate, max(d.peak, MIN_PER_S / FACTOR) * 2 ** (min(now - d.at, DOUBLE_S) / DOUBLE_S))
        if rate >= was:  # a new peak, or the old one seen again: held from now (a lower one changes nothing)
            d.peak, d.at = rate, now

    @staticmethod
    def decayed(d: _Domain, now: float) -> float:
        """The peak now: held PEAK_HOLD_S after it was last seen, then halving every PEAK_HALF_LIFE_S."""
        return d.peak * 0.5 ** (max(0.0, now - d.at - PEAK_HOLD_S) / PEAK_HALF_LIFE_S)

    def ceiling(self, service: str, key: str, level_rate: int, now: float) -> int:
        """The ceiling to serve now: the level's before a baseline, the learned one after."""
        d = self.domains.get((service, key))
        if d is None or now - d.first < self.warmup_s:
            return level_rate
        want = math.ceil(FACTOR * self.decayed(d, now))
        return max(MIN_PER_S, min(want, MAX_OF_LEVEL * level_rate))

    def tick(self, svc: HttpService, rates: dict[str, tuple[int, int]], now: float) -> dict[str, int]:
        """Learn one read of the service's table (domain key → (rate, surge until)); the map
        entries (map_key) of its domains whose ceiling differs from the level's number. Nothing
        for a service whose operator set `service_rate`."""
        if svc.service_rate is not None:
            return {}
        level = svc.effective_service_rate()
        # a domain with no entry had no unverified request for a minute (the entry idled out): 0/s
        keys = {k: (0, 0) for k in (svc.domains or (svc.name,))}
        for key, (rate, until) in {**keys, **rates}.items():
            if key.endswith("|x"):  # the exempt paths' entry: its own ceiling, not learned
                continue
            self.learn(svc.name, key, rate, until > now, now)
        out: dict[str, int] = {}
        for name, key in self.domains:
            if name == svc.name and (c := self.ceiling(name, key, level, now)) != level:
                out[hc.ceiling_key(svc, key)] = c
        return out


def service_rates(text: str) -> dict[str, tuple[int, int]]:
    """`show table <svc>_svc` → domain key → (unverified requests in the last second, surge until)."""
    out: dict[str, tuple[int, int]] = {}
    for ln in text.splitlines()[1:]:
        _, sep, rest = ln.partition(": ")
        if not sep:
            continue
        fields = dict(f.split("=", 1) for f in rest.split() if "=" in f)
        key = fields.get("key")
        if not key:
            continue
        rate = next((v for k, v in fields.items() if k.startswith("http_req_rate")), "0")
        until = fields.get("gpt0", fields.get("gpt(0)", "0"))
        try:
            out[key] = (int(rate), int(until))
        except ValueError:
            continue
    return out


def map_entries(text: str) -> dict[str, int]:
    """`show map #ID` → key → value ('0x55d1: www.example.com 12' lines)."""
    out: dict[str, int] = {}
    for ln in text.splitlines():
        parts = ln.split()
        if len(parts) == 3 and parts[0].startswith("0x"):
            try:
                out[parts[1]] = int(parts[2])
            except ValueError:
                continue
    return out


def map_id(text: str, name: str = hc.CEILING_MAP) -> str | None:
    """`show map` → '#ID' of the map loaded from `name`. HAProxy 2.6 lists one map a line:
    '<id> (<path>) pattern loaded from file ...'."""
    for ln in text.splitlines():
        parts = ln.split()
        if len(parts) >= 2 and not ln.startswith("#") and parts[1].strip("()").split("/")[-1] == name:
            return "#" + parts[0]
    return None


def changes(have: dict[str, int], want: dict[str, int]) -> list[str]:
    """Runtime API commands (without the map's id) that turn `have` into `want`: keys no longer
    learned are deleted (the map's default, the level's number, applies again)."""
    cmds = [f"del map {{id}} {k}" for k in sorted(have) if k not in want]
    for k, v in sorted(want.items()):
        if k not in have:
            cmds.append(f"add map {{id}} {k} {v}")
        elif have[k] != v:
            cmds.append(f"set map {{id}} {k} {v}")
    return cmds


def sync(sock: str, svc: HttpService, learned: Ceilings, now: float) -> dict[str, int]:
    """Read the service's table, learn, and make HAProxy's ceiling map say what was learned;
    returns the keys whose ceiling was written now (key → requests/s). `learned.served` keeps
    what the map holds afterwards: a map written again after HAProxy restarted holds what it
    held before (for the daemon, nothing changed)."""
    rates = service_rates(runtime.command(sock, f"show table {hc.service_table(svc)}"))
    want = learned.tick(svc, rates, now)
    mid = map_id(runtime.command(sock, "show map"))
    if mid is None:
        return {}
    mine = hc.ceiling_key(svc, "")
    have = {k: v for k, v in map_entries(runtime.command(sock, f"show map {mid}")).items() if k.startswith(mine)}
    cmds = changes(have, want)
    for c in cmds:
        runtime.command(sock, c.format(id=mid))
    learned.served[svc.name] = dict(want)
    return {k: v for k, v in want.items() if have.get(k) != v}
