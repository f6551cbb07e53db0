"""Layer 7 (issue 29): HTTP(S) services behind an HAProxy that xdpguard owns.

- spec.py            the typed, validated description of an HTTP service (pure)
- haproxy_config.py  spec(s) → HAProxy 2.6 configuration text (pure)
- proc.py            the HAProxy process owner: check, start, reload, repair, stop
- runtime.py         the runtime API client: stick tables and stats as typed records
"""
