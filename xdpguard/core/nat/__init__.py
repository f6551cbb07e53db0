"""The nftables side: NAT, forwards and connection limits in our own table.

- connlimit: connection limits of forwarded services in our table, offenders promoted to XDP bans.
- forward: the forwarding rules: `forward add|del|list`, their NAT rules, sysctls and teardown.
- health: backend health checks of the forwards (`xdpguard run`).
- nft: pure builders of libnftables JSON for our table, and the thin applier.
- origin: `xdpguard origin-rules`: firewall rules for the real servers.
"""
