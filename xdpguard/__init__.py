"""xdpguard: a DDoS protective IP on one Linux box."""

__version__ = "0.1.0"
