"""superci: a distributed continuous-integration system for one LAN."""

__version__ = "0.1.0"
