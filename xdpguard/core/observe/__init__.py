"""What xdpguard sees: counters, samples, attack events, history, reports, metrics, checks.

- capture: `xdpguard capture`: sampled dropped packets into a pcapng file.
- doctor: `xdpguard doctor`: is this machine (and an interface) ready for xdpguard?
- events: attack detection: thresholds, attack events, their log and hook.
- fanout: one consumer of the sample ring, fanned out to top, stats, capture and detection.
- history: the daemon's rolling traffic history on disk, for reports.
- metrics: Prometheus metrics for `xdpguard run --metrics`.
- report: `xdpguard report`: one attack event as an HTML page and a PNG.
- sampling: packet samples from the data path: switch, counters, ring reader.
- stats: snapshots of one protected interface: what top, stats, detection and metrics show.
"""
