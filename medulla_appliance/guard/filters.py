"""Filters: which log lines are authentication failures, and from which address.

A filter is a list of ``failregex`` patterns matched against the *message* of a line (what
follows the ``prefix``: date, host, ``daemon[pid]:``), each anchored at both ends and each
holding ``<HOST>`` exactly once. Anchoring is what keeps text the client controls (a user
name such as ``admin from 10.0.0.1``) from being taken for the address: the daemon writes
the real address at a fixed place near the end, so a pattern that must reach the end of
the line after ``<HOST>`` can only settle on that one (fail2ban's lesson, CVE-2021-32749
and the older ``sshd`` user-name injections).

All patterns of a filter are compiled into one alternation, each branch in a group of its
own, so one regex call decides a line; ``Match.rule`` says which pattern matched. No
reactor, no I/O: ``tests/unit/test_guard_filters.py`` runs every filter over its
annotated sample log.
"""

import functools
import ipaddress
import re
from typing import NamedTuple

# An IPv4 address, or anything made of hex digits and colons (with an optional IPv4 tail)
# that could be an IPv6 address; ``ipaddress`` has the last word on both.
_IPV4 = r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}"
_IPV6 = r"(?=[0-9A-Fa-f]{0,4}:)[0-9A-Fa-f:]{2,39}(?:(?<=:)" + _IPV4 + r")?"
HOST_PATTERN = "(?:%s|%s)" % (_IPV4, _IPV6)
# rsyslog's RFC 3339 timestamps (Debian 12), ejabberd's (a space for the T), and the
# traditional BSD ones. Loose on purpose: character classes cost a third of the time
# exact fields do, and the date is no evidence; the daemon tag after it is.
DATE_PATTERN = (r"(?:[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9:.,+Z-]{8,30}"
                r"|[A-Z][a-z]{2} [ 0-9][0-9] [0-9]{2}:[0-9]{2}:[0-9]{2})")
# A line of a syslog file: date, host, tag; or the bare message (sshd -E, journal).
DEFAULT_PREFIX = r"<DATE> \S+ <DAEMON>(?:\[[0-9]+\])?: "
MAX_LINE_CHARS = 8192

_GROUP_RE = re.compile(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>")
_GROUP_REF_RE = re.compile(r"\(\?P=([A-Za-z_][A-Za-z0-9_]*)\)|\(\?\(([A-Za-z_][A-Za-z0-9_]*)\)")
_PLACEHOLDER_RE = re.compile(r"<(HOST|DATE|DAEMON)>")


class FilterError(ValueError):
    """A pattern that cannot work; ``index`` is the failregex it concerns, or None."""

    def __init__(self, message, key="failregex", index=None):
        super().__init__(message)
        self.key, self.index = key, index


class Match(NamedTuple):
    """One failure: the address (normalised, IPv4-mapped IPv6 as IPv4) and the pattern."""

    host: str
    rule: int


# Attackers repeat themselves: parsing each address once is most of a filter's speed.
@functools.lru_cache(maxsize=65536)
def normalise_address(text):
    """The canonical text of an address, IPv4-mapped IPv6 as IPv4; None if not one."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return str(address)


def _expand(pattern, daemons, key, index):
    def substitute(match):
        name = match.group(1)
        if name == "HOST":
            return "(?P<host>%s)" % HOST_PATTERN
        if name == "DATE":
            return DATE_PATTERN
        return "(?:%s)" % "|".join(re.escape(d) for d in daemons)
    return _PLACEHOLDER_RE.sub(substitute, pattern)


def _rename_groups(pattern, suffix):
    """Give every named group of one branch its own name, so branches can be joined."""
    pattern = _GROUP_RE.sub(lambda m: "(?P<%s_%s>" % (m.group(1), suffix), pattern)

    def reference(match):
        if match.group(1):
            return "(?P=%s_%s)" % (match.group(1), suffix)
        return "(?(%s_%s)" % (match.group(2), suffix)
    return _GROUP_REF_RE.sub(reference, pattern)


def _compile_branch(pattern, daemons, index, key="failregex"):
    """Check one pattern alone: it compiles, is anchored, has exactly one host group."""
    text = pattern.strip()
    if not text.startswith("^") or not text.endswith("$") or text.endswith("\\$"):
        raise FilterError("a pattern must be anchored: start with ^ and end with $, so text "
                          "a client sends can never be taken for the address", key, index)
    expanded = _expand(text, daemons, key, index)
    try:
        compiled = re.compile(expanded)
    except re.error as exc:
        raise FilterError("not a valid regular expression: %s" % exc, key, index) from None
    if key == "failregex" and list(compiled.groupindex).count("host") != 1:
        raise FilterError("a failregex needs exactly one <HOST> (or (?P<host>...))", key, index)
    # The anchors go around the whole branch: strip them, they are added once for all.
    return expanded[1:-1]


class Filter:
    """The compiled patterns of one filter (see the module docstring)."""

    def __init__(self, name, failregex, *, ignoreregex=(), daemons=(), prefix=DEFAULT_PREFIX,
                 journalmatch=(), description=""):
        if not failregex:
            raise FilterError("a filter needs at least one failregex")
        self.name, self.description = name, description
        self.daemons = tuple(daemons)
        self.journalmatch = tuple(journalmatch)
        if "<DAEMON>" in prefix and not self.daemons:
            raise FilterError("the prefix names <DAEMON>: set daemon", "daemon")
        branches = []
        self._host_groups = {}
        for index, pattern in enumerate(failregex):
            body = _rename_groups(_compile_branch(pattern, self.daemons, index), index)
            branches.append("(?P<r%d>%s)" % (index, body))
            self._host_groups["r%d" % index] = ("host_%d" % index, index)
        ignores = [_compile_branch(p, self.daemons, i, "ignoreregex")
                   for i, p in enumerate(ignoreregex)]
        try:
            prefix_re = _expand(prefix, self.daemons, "prefix", None)
            re.compile(prefix_re)
        except re.error as exc:
            raise FilterError("not a valid regular expression: %s" % exc, "prefix") from None
        body = "(?:%s)" % "|".join(branches)
        # Lines from files carry the prefix (date, host, tag), or come bare when the
        # daemon writes its own file (sshd -E); journal messages come bare, or with what
        # the daemon itself puts first (prosody's session id), which the prefix allows.
        self._line_re = re.compile(r"(?:%s)?%s\r?\Z" % (prefix_re, body))
        self._ignore_re = re.compile(
            r"(?:%s)?(?:%s)\r?\Z" % (prefix_re, "|".join(ignores))) if ignores else None
        self.size = len(failregex)
        # What the filter does, to tell a changed filter from the same one read again.
        self.signature = (name, self.daemons, self.journalmatch, self._line_re.pattern,
                          None if self._ignore_re is None else self._ignore_re.pattern)

    def _result(self, match, ignore, text):
        if match is None:
            return None
        if ignore is not None and ignore.match(text):
            return None
        group, index = self._host_groups[match.lastgroup]
        host = normalise_address(match.group(group))
        return None if host is None else Match(host, index)

    def match_line(self, line):
        """The failure one line of a log file reports, or None."""
        line = line[:MAX_LINE_CHARS]
        return self._result(self._line_re.match(line), self._ignore_re, line)

    def match_message(self, message, identifier=None):
        """The failure a journal message reports, or None; ``identifier`` is its daemon."""
        if identifier is not None and self.daemons and identifier not in self.daemons:
            return None
        message = message[:MAX_LINE_CHARS]
        return self._result(self._line_re.match(message), self._ignore_re, message)

    def scan(self, lines):
        """The failures in an iterable of lines, in order: ``[(Match, line), ...]``."""
        found = []
        match, result = self._line_re.match, self._result
        ignore = self._ignore_re
        for m in map(match, lines):
            if m is not None:
                line = m.string
                hit = result(m, ignore, line)
                if hit is not None:
                    found.append((hit, line))
        return found
