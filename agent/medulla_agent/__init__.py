"""The Medulla workstation agent (its own Debian package, medulla-agent)."""
