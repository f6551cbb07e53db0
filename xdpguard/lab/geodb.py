"""A small country database for the lab and the tests: IPFire location format, written with
Debian's python3-location (the reader geo rules use by default). Lab prefixes only."""

from __future__ import annotations

from pathlib import Path

# user-assigned ISO 3166 codes (QM..QZ): no real country; libloc refuses XA..XZ
LAB_NETS = {"198.18.64.0/18": "QY", "2001:db8:a::/48": "QY", "198.18.128.0/18": "QZ", "2001:db8:b::/48": "QZ"}


def write_location_db(path: str | Path, nets: dict[str, str] | None = None) -> Path:
    import location  # Debian's python3-location, lazy like bcc

    nets = LAB_NETS if nets is None else nets
    w = location.Writer()
    w.vendor = "xdpguard lab"
    w.description = "lab prefixes mapped to made-up countries"
    w.license = "CC0"
    for cc in sorted(set(nets.values())):
        c = w.add_country(cc)
        c.name = f"lab country {cc}"
        c.continent_code = "EU"
    for cidr, cc in nets.items():
        n = w.add_network(cidr)
        n.country_code = cc
    w.write(str(path))
    return Path(path)
