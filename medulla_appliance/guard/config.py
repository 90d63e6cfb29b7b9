"""The schema of /etc/medulla/guard.ini, and the jail and filter files under guard.d/.

``guard.ini`` (+ ``.local`` + ``guard.d/*.ini``) is read by ``core.config`` like every
daemon's file. Jails and filters are one INI file each, in ``guard.d/jails/`` and
``guard.d/filters/`` (sub-folders, so ``core.config`` never takes them for drop-ins of
``guard.ini``), each overridable key by key by a ``NAME.ini.local`` beside it. They are
read here with ``core.ini`` and checked with ``core.config.Key`` types; every error names
file, line, section and key, and all of them are reported at once.
"""

import os
import re
from dataclasses import dataclass, field

from ..core.config import ConfigError, ConfigErrors, Key, Schema
from ..core.ini import InvalidValue, convert, read_ini
from ..core.xmpp.link import link_sections
from .filters import DEFAULT_PREFIX, Filter, FilterError

DEFAULT_CONFIG = "/etc/medulla/guard.ini"
ALWAYS_ALLOWED = ("127.0.0.0/8", "::1/128")
MAX_JAILS = 64

SCHEMA = Schema({
    "global": {
        "log_level": Key("choice", "INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                         help="least severe level logged to the journal"),
    },
    "guard": {
        "allowlist": Key("cidr_list", "", always=ALWAYS_ALLOWED,
                         help="addresses and networks never banned, by any jail: admins' "
                              "sites, NAT addresses shared by many workstations...; "
                              "loopback and this machine's own addresses always are"),
        "fleet_hosts": Key("list", "",
                           help="the master and the relays, by address or name: never "
                                "banned (names are resolved at start and on reload)"),
        "fleet_from_master": Key("path", "/etc/medulla/master.ini",
                                 help="on the master: its [xmpp] server and its [assessor] "
                                      "relays join fleet_hosts (ignored if the file is "
                                      "absent; empty to turn off)"),
        "backend": Key("choice", "nftables", choices=("nftables", "dryrun"),
                       help="nftables: bans are elements of our own nftables sets; "
                            "dryrun: bans are only logged and listed"),
        "table": Key("str", "medulla_guard",
                     help="the nftables table (family inet) medulla-guard owns; nothing "
                          "outside it is ever touched"),
        "verdict": Key("choice", "reject", choices=("reject", "drop"),
                       help="what banned addresses get: reject (TCP reset, ICMP "
                            "unreachable) or drop (silence)"),
        "nft": Key("path", "/usr/sbin/nft", help="the nft program"),
        "journalctl": Key("path", "/usr/bin/journalctl", help="the journalctl program"),
        "rules_dir": Key("path", "/etc/medulla/guard.d",
                         help="holds jails/*.ini and filters/*.ini"),
        "state_dir": Key("path", "/var/lib/medulla-guard",
                         help="read positions, journal cursors and ban history"),
        "control_socket": Key("path", "/run/medulla-guard/control.sock",
                              help="unix socket (mode 0660) for medullactl guard"),
        "max_bans": Key("int", 100000, min=1, max=10000000,
                        help="at most this many addresses banned at once; past it new "
                             "bans are refused and logged (spoofed UDP sources cannot "
                             "fill memory or the sets)"),
        "manual_bantime": Key("duration", "1h", min=1, max=365 * 86400,
                              help="ban time of 'medullactl guard ban ADDR' without one"),
        "snapshot_interval": Key("duration", "10m", min=10, max=86400,
                                 help="with [xmpp] jid: every ban in force is sent to the "
                                      "master at each session start and this often (so "
                                      "it catches up after its own restart)"),
    },
    # Bans and unbans go to the master (guard.ban, guard.unban) when a jid is set.
    **link_sections(password_file="/etc/medulla/relay-xmpp.password",
                    private_key="/var/lib/medulla/relay/relay.key",
                    jid_example="master@medulla.local/guard on the master host (with the\n"
                                "master's password file and key), relay-lyon@medulla.local/guard\n"
                                "on a relay"),
})

# The keys of a jail file's [jail] section; defaults are the seeds' rule.
JAIL_KEYS = {
    "enabled": Key("bool", True, help="whether the jail runs"),
    "filter": Key("str", None, help="the filter's name (guard.d/filters/NAME.ini)"),
    "sources": Key("list", "", help="file:/PATH (followed across rotation) or journal "
                                    "(the filter's journalmatch), comma-separated"),
    "maxretry": Key("int", 5, min=1, max=1000, help="failures that ban an address ..."),
    "findtime": Key("duration", "10m", min=1, max=30 * 86400, help="... within this time"),
    "bantime": Key("duration", "10m", min=1, max=365 * 86400, help="how long a ban lasts"),
    "bantime_increment": Key("bool", False,
                             help="repeat offenders get bantime * factor^(n-1)"),
    "bantime_factor": Key("float", 2.0, min=1, max=100, help="growth per repeated ban"),
    "bantime_max": Key("duration", "7d", min=1, max=365 * 86400,
                       help="the longest an increased ban lasts"),
    "repeat_window": Key("duration", "1d", min=1, max=365 * 86400,
                         help="a ban counts as a repeat when the last one began within this"),
    "allowlist": Key("cidr_list", "", help="addresses this jail never bans (on top of "
                                           "[guard] allowlist)"),
}
# Filter keys other than the raw regex lists.
FILTER_KEYS = {
    "description": Key("str", "", help="what the filter catches"),
    "daemon": Key("list", "", help="syslog tags (and journal SYSLOG_IDENTIFIERs) accepted"),
    "journalmatch": Key("list", "", help="journalctl matches, FIELD=VALUE"),
}
REGEX_KEYS = ("failregex", "ignoreregex", "prefix")
# Schema checks the defaults once, at import, and converts them.
_DEFAULTS = Schema({"jail": JAIL_KEYS, "filter": FILTER_KEYS}).defaults
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_JOURNALMATCH_RE = re.compile(r"[A-Z0-9_]+=\S+")


@dataclass
class Jail:
    """One jail as configured: its filter, sources and policy numbers."""

    name: str
    filter: Filter
    sources: tuple
    maxretry: int = 5
    findtime: float = 600.0
    bantime: float = 600.0
    bantime_increment: bool = False
    bantime_factor: float = 2.0
    bantime_max: float = 7 * 86400.0
    repeat_window: float = 86400.0
    allowlist: tuple = field(default_factory=tuple)
    path: str = ""


def _layers(path):
    """The entries of ``path`` and of ``path.local`` over them; errors; header lines."""
    entries, headers, errors = {}, {}, []
    for layer in (path, path + ".local"):
        ini = read_ini(layer, missing_ok=layer != path)
        if ini is None:
            continue
        errors += ini.errors
        for section, values in ini.sections.items():
            headers.setdefault(section, (ini.path, ini.headers[section]))
            for key, entry in values.items():
                entries.setdefault(section, {})[key] = (ini.path, entry)
    return entries, headers, errors


def _typed(section, entries, keys, errors, extra=()):
    """Typed values of one section by ``keys``; unknown keys and bad values are errors."""
    values = dict(_DEFAULTS[section])
    for name, (path, entry) in entries.items():
        key = keys.get(name)
        if key is None:
            if name not in extra:
                errors.append(ConfigError(path, entry.line, section, name, "unknown key"))
            continue
        try:
            values[name] = convert(key, entry.value)
        except InvalidValue as exc:
            errors.append(ConfigError(path, entry.line, section, name, str(exc)))
    return values


def _regex_list(raw):
    """The patterns of a multi-line value: one per line, blank lines ignored."""
    return [line.strip() for line in raw.split("\n") if line.strip()]


def _rule_files(folder, errors):
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    except OSError as exc:
        errors.append(ConfigError(folder, None, None, None, "cannot list: %s" % exc.strerror))
        return []
    return [(n[:-4], os.path.join(folder, n)) for n in names
            if n.endswith(".ini") and not n.startswith(".")]


def load_filter(name, path):
    """One filter file (and its .local); raises ConfigErrors."""
    entries, headers, errors = _layers(path)
    if errors:
        raise ConfigErrors(errors)
    unknown = [s for s in entries if s != "filter"]
    for section in unknown:
        file, line = headers[section]
        errors.append(ConfigError(file, line, section, None, "unknown section; a filter file "
                                                             "has only [filter]"))
    section = entries.get("filter", {})
    values = _typed("filter", section, FILTER_KEYS, errors, extra=REGEX_KEYS)
    for match in values["journalmatch"]:
        if not _JOURNALMATCH_RE.fullmatch(match):
            file, entry = section["journalmatch"]
            errors.append(ConfigError(file, entry.line, "filter", "journalmatch",
                                      "expected FIELD=VALUE items, got %r" % match))
    if "failregex" not in section:
        errors.append(ConfigError(path, None, "filter", "failregex", "required key is missing"))
    if errors:
        raise ConfigErrors(errors)
    raws = {key: section[key] for key in REGEX_KEYS if key in section}
    prefix = raws["prefix"][1].value if "prefix" in raws else DEFAULT_PREFIX
    try:
        return Filter(name, _regex_list(raws["failregex"][1].value),
                      ignoreregex=_regex_list(raws["ignoreregex"][1].value)
                      if "ignoreregex" in raws else (),
                      daemons=values["daemon"], prefix=prefix,
                      journalmatch=values["journalmatch"], description=values["description"])
    except FilterError as exc:
        file, entry = raws.get(exc.key, (path, None))
        line = None if entry is None else entry.line
        where = "" if exc.index is None else "pattern %d: " % (exc.index + 1)
        raise ConfigErrors([ConfigError(file, line, "filter", exc.key, where + str(exc))]) \
            from None


def _check_sources(sources, file, line, errors):
    for source in sources:
        kind, _, target = source.partition(":")
        if source == "journal" or (kind == "file" and target.startswith("/")):
            continue
        errors.append(ConfigError(file, line, "jail", "sources",
                                  "expected file:/absolute/path or journal, got %r" % source))


def load_rules(rules_dir, *, filters=None):
    """The enabled jails under ``rules_dir`` (``jails/*.ini``, ``filters/*.ini``).

    Raises ConfigErrors with every problem of every file.
    """
    errors = []
    known_filters = {}
    for name, path in _rule_files(os.path.join(rules_dir, "filters"), errors):
        if filters is not None and name not in filters:
            continue
        try:
            known_filters[name] = load_filter(name, path)
        except ConfigErrors as exc:
            errors += exc.errors
    jails = []
    for name, path in _rule_files(os.path.join(rules_dir, "jails"), errors):
        jail = _load_jail(name, path, known_filters, rules_dir, errors)
        if jail is not None:
            jails.append(jail)
    if len(jails) > MAX_JAILS:
        errors.append(ConfigError(rules_dir, None, None, None,
                                  "more than %d enabled jails" % MAX_JAILS))
    if errors:
        raise ConfigErrors(errors)
    return jails


def _load_jail(name, path, known_filters, rules_dir, errors):
    if not _NAME_RE.fullmatch(name):
        errors.append(ConfigError(path, None, None, None, "a jail file is named like "
                                  "'sshd.ini': lower-case letters, digits, - and _"))
        return None
    entries, headers, found = _layers(path)
    errors += found
    if found:
        return None
    for section in entries:
        if section != "jail":
            file, line = headers[section]
            errors.append(ConfigError(file, line, section, None,
                                      "unknown section; a jail file has only [jail]"))
    section = entries.get("jail", {})
    before = len(errors)
    values = _typed("jail", section, JAIL_KEYS, errors)
    if len(errors) > before or not values["enabled"]:
        return None
    filter_name = values.get("filter") or name
    if filter_name not in known_filters:
        file, entry = section.get("filter", (path, None))
        errors.append(ConfigError(file, entry and entry.line, "jail", "filter",
                                  "no filter %r in %s" % (
                                      filter_name, os.path.join(rules_dir, "filters"))))
        return None
    file, entry = section.get("sources", (path, None))
    line = entry and entry.line
    if not values["sources"]:
        errors.append(ConfigError(file, line, "jail", "sources", "an enabled jail needs at "
                                  "least one source"))
        return None
    _check_sources(values["sources"], file, line, errors)
    return Jail(name=name, filter=known_filters[filter_name], sources=values["sources"],
                maxretry=values["maxretry"], findtime=values["findtime"],
                bantime=values["bantime"], bantime_increment=values["bantime_increment"],
                bantime_factor=values["bantime_factor"], bantime_max=values["bantime_max"],
                repeat_window=values["repeat_window"], allowlist=values["allowlist"],
                path=path)

