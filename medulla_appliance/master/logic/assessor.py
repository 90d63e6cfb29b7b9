"""The assessor: which relay (and so which XMPP server) an agent should use.

Rules come from `[assessor]` in master.ini, first match wins:
`subnet 10.1.0.0/16 lyon` (any of the agent's addresses in the subnet) or
`tag paris-office paris` (the agent's inventory tag); else `default_relay`. The relay
named `master` is this server: the agent stays where it is.
"""

import ipaddress
from dataclasses import dataclass

MASTER = "master"


class AssessorConfigError(ValueError):
    """A relay or rule line that does not parse; the message quotes it."""


@dataclass(frozen=True)
class Relay:
    """Where agents of a relay connect: its name and XMPP server."""

    name: str
    server: str
    port: int


@dataclass(frozen=True)
class Rule:
    kind: str       # "subnet" or "tag"
    value: object   # ip_network or tag text
    relay: str


def parse_relay(text):
    """`NAME HOST:PORT` -> Relay."""
    parts = text.split()
    if len(parts) != 2 or ":" not in parts[1]:
        raise AssessorConfigError("relay %r: expected 'NAME HOST:PORT'" % text)
    host, _, port = parts[1].rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise AssessorConfigError("relay %r: bad HOST:PORT" % text)
    return Relay(parts[0], host.strip("[]"), int(port))


def parse_rule(text, relay_names):
    """`subnet CIDR RELAY` or `tag TAG RELAY` -> Rule, RELAY being a known relay."""
    parts = text.split()
    if len(parts) != 3 or parts[0] not in ("subnet", "tag"):
        raise AssessorConfigError("rule %r: expected 'subnet CIDR RELAY' or 'tag TAG RELAY'"
                                  % text)
    kind, value, relay = parts
    if relay not in relay_names:
        raise AssessorConfigError("rule %r: unknown relay %r (known: %s)"
                                  % (text, relay, ", ".join(sorted(relay_names))))
    if kind == "subnet":
        try:
            value = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise AssessorConfigError("rule %r: bad subnet %r" % (text, value)) from None
    return Rule(kind, value, relay)


class Assessor:
    """Chooses a relay for an agent from its addresses and inventory tag."""

    def __init__(self, relays, rules, default_relay=MASTER):
        self.relays = {r.name: r for r in relays}
        names = set(self.relays) | {MASTER}
        if default_relay not in names:
            raise AssessorConfigError("default_relay %r is not a known relay" % default_relay)
        self.rules = [parse_rule(r, names) if isinstance(r, str) else r for r in rules]
        self.default_relay = default_relay

    @classmethod
    def from_config(cls, section):
        relays = [parse_relay(r) for r in section["relays"]]
        return cls(relays, section["rules"], section["default_relay"])

    def relay_for(self, ips, inventory_tag):
        """The name of the relay this agent belongs to."""
        addresses = []
        for ip in ips:
            try:
                addresses.append(ipaddress.ip_address(ip))
            except ValueError:
                continue
        for rule in self.rules:
            if rule.kind == "tag" and inventory_tag and rule.value == inventory_tag:
                return rule.relay
            if rule.kind == "subnet" and any(a in rule.value for a in addresses):
                return rule.relay
        return self.default_relay

    def assessment(self, ips, inventory_tag):
        """The `data` of result.agent.assess: the relay and where to connect."""
        name = self.relay_for(ips, inventory_tag)
        relay = self.relays.get(name)
        if relay is None:
            return {"relay": name, "server": None, "port": None}
        return {"relay": name, "server": relay.server, "port": relay.port}
