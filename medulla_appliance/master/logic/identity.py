"""Who is this agent? Validation of the facts an agent sends, the check that its JID
matches them, and the decision that ties a registration to a machine record.

A machine is the same machine across renames and re-addressing: it is found first by the
public key it pinned at enrolment, then by a MAC address it shares with a known machine.
Blacklisted MACs (the seeds' "Duplicate MAC Addresses": VPN and security software that
give every machine the same MAC) never count.
"""

import ipaddress
import re
from dataclasses import dataclass

MAX_MACS = 64
MAX_IPS = 128
MAX_TEXT = 256
HOSTNAME_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]{0,62})\Z")
MAC_RE = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}\Z")
SUFFIX_RE = re.compile(r"^[a-z0-9]{3}\Z")
VERSION_RE = re.compile(r"^[A-Za-z0-9.+~_-]{1,64}\Z")
SERVICES = ("ssh", "vnc", "rdp")


class Refused(Exception):
    """A registration we refuse: `code` (PROTOCOL.md ret), `error` (a word), `message`."""

    def __init__(self, code, error, message):
        super().__init__(message)
        self.code, self.error, self.message = code, error, message


@dataclass(frozen=True)
class Facts:
    """What an agent says about its machine, validated."""

    hostname: str
    macs: tuple
    ips: tuple
    os: str
    agent_version: str
    inventory_tag: str
    public_key: str
    services: tuple


def _text(data, key, *, required=False, pattern=None, limit=MAX_TEXT):
    value = data.get(key, "")
    if not isinstance(value, str) or (required and not value) or len(value) > limit:
        raise Refused(400, "bad-field", "%s: expected a string of at most %d characters"
                      % (key, limit))
    if value and pattern is not None and not pattern.match(value):
        raise Refused(400, "bad-field", "%s: invalid value %r" % (key, value[:64]))
    return value


def _list(data, key, limit):
    value = data.get(key, [])
    if not isinstance(value, list) or len(value) > limit or \
            not all(isinstance(v, str) and len(v) <= 64 for v in value):
        raise Refused(400, "bad-field", "%s: expected a list of at most %d strings" % (key, limit))
    return value


def normalise_mac(mac):
    """`aa:bb:cc:dd:ee:ff` from upper/lower case, `-` or `:` separated; ValueError else."""
    text = mac.strip().lower().replace("-", ":")
    if not MAC_RE.match(text):
        raise ValueError("not a MAC address: %r" % mac[:64])
    return text


def parse_facts(data):
    """Facts from the `data` of agent.register / agent.assess, or Refused (400)."""
    if not isinstance(data, dict):
        raise Refused(400, "bad-field", "data: expected an object")
    macs = []
    for mac in _list(data, "macs", MAX_MACS):
        try:
            macs.append(normalise_mac(mac))
        except ValueError as e:
            raise Refused(400, "bad-field", "macs: %s" % e) from None
    ips = []
    for ip in _list(data, "ips", MAX_IPS):
        try:
            if "%" in ip:  # an IPv6 scope id is free text (spaces, newlines) and host-local
                raise ValueError(ip)
            ips.append(str(ipaddress.ip_address(ip)))
        except ValueError:
            raise Refused(400, "bad-field", "ips: not an IP address: %r" % ip[:64]) from None
    services = data.get("services", {})
    if not isinstance(services, dict) or not all(
            k in SERVICES and isinstance(v, bool) for k, v in services.items()):
        raise Refused(400, "bad-field", "services: expected {%s: true|false}" % "|".join(SERVICES))
    if not macs:
        raise Refused(400, "bad-field", "macs: at least one MAC address is needed")
    return Facts(
        hostname=_text(data, "hostname", required=True, pattern=HOSTNAME_RE, limit=63),
        macs=tuple(dict.fromkeys(macs)), ips=tuple(dict.fromkeys(ips)),
        os=_text(data, "os"), agent_version=_text(data, "agent_version", pattern=VERSION_RE),
        inventory_tag=_text(data, "inventory_tag", limit=64),
        public_key=_text(data, "public_key", required=True, limit=128),
        services=tuple(sorted(k for k, v in services.items() if v)))


def check_sender(facts, sender, domain):
    """Refused (403) unless `sender` (a JID) is `HOST.SFX@domain/MAC` for these facts."""
    local = (sender.user or "")
    host, _, suffix = local.rpartition(".")
    resource = (sender.resource or "").lower()
    macs = {m.replace(":", "") for m in facts.macs}
    if (sender.host != domain or host != facts.hostname.lower()
            or not SUFFIX_RE.match(suffix) or resource not in macs):
        raise Refused(403, "sender-mismatch",
                      "sender %s does not match hostname %r and MACs %s"
                      % (sender.full()[:128], facts.hostname, ", ".join(facts.macs)))


def identity_macs(facts, blacklist):
    """The MACs that may identify this machine: all but the blacklisted ones."""
    return tuple(m for m in facts.macs if m not in blacklist)


@dataclass(frozen=True)
class Decision:
    """`kind` "new" or "known"; for known, `uuid` and `renamed_from` (old hostname)."""

    kind: str
    uuid: str = ""
    renamed_from: str = ""


def decide(facts, fingerprint, by_key, by_macs):
    """Tie a verified registration to a machine.

    `by_key`: the machine (dict with uuid, hostname, key_fingerprint) whose pinned key
    has this fingerprint, or None. `by_macs`: machines sharing an identity MAC.
    """
    if by_key is not None:
        renamed = by_key["hostname"] if by_key["hostname"] != facts.hostname else ""
        return Decision("known", by_key["uuid"], renamed)
    reset = [m for m in by_macs if not m["key_fingerprint"]]
    if len(by_macs) == 1 and reset:
        # An admin reset this machine's key: the next enrolment pins the new one.
        renamed = reset[0]["hostname"] if reset[0]["hostname"] != facts.hostname else ""
        return Decision("known", reset[0]["uuid"], renamed)
    if by_macs:
        names = ", ".join("%s (%s)" % (m["hostname"], m["uuid"]) for m in by_macs)
        raise Refused(409, "key-mismatch",
                      "MAC address already enrolled as %s with another key; if the agent "
                      "was reinstalled, run: medullactl machine reset-key NAME" % names)
    return Decision("new")
