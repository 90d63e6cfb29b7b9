"""Packages, shared by master, relay and agent (stdlib, `medulla_appliance.core` and Twisted
only): `descriptor` (parsing the signed deployment descriptor) over `model` (its dataclasses
and canonical bytes), `store` (package folders on disk), and `medulla_import`,
`medulla_sequence`, `medulla_templates` (Medulla packages into our form)."""
