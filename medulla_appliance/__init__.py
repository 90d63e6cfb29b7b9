"""Medulla Appliance: server daemons of a Medulla fleet and the workstation agent."""

__version__ = "0.1.0"
