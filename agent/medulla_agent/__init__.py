"""The Medulla workstation agent (its own Debian package, medulla-agent)."""

__version__ = "0.1.0"
