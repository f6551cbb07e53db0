"""`xdpguard run`: its wiring, the reconciler's loop and the automatic mitigation.

- mitigation: automatic mitigation: fingerprint a flood, drop it with a temporary filter, lift it.
- reconciler: the reconciler of `xdpguard run --config`: restore, adopt, repair drift, reload.
- run: the wiring of `xdpguard run`: health checks, detection, sweeps, reconciler, metrics, signals.
"""
