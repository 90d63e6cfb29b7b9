"""The Medulla INI dialect: a line-tracking reader, value escaping, the syntax of each type.

configparser forgets where a value came from, and admins need ``file:line`` in every error,
so this reader keeps the line of each key. ``convert`` turns one raw value into its typed
value; which key has which type, and layering, belong to ``core.config``.

The grammar is configparser's default one without interpolation: ``[section]``, ``key =
value`` or ``key: value``, full-line ``#``/``;`` comments, indented continuation lines joined
with a newline (a blank line ends them). Key names are lower-cased as configparser does, so
files written for the historical Python agent keep working.
"""

import codecs
import ipaddress
import math
import os
import re
import stat
from dataclasses import dataclass, field
from typing import NamedTuple

# Far above any real configuration file; refusing more keeps a wrong path (a log, a disk
# image) from costing seconds and memory before it is reported.
MAX_FILE_BYTES = 1024 * 1024
# One error per junk line would bury the useful ones; past this the file is clearly wrong.
MAX_ERRORS_PER_FILE = 20

ENDPOINT_PREFIXES = ("tcp", "tcp6", "ssl", "unix", "udp", "systemd")
LIST_KINDS = ("list", "mac_list", "cidr_list")
NUMERIC_KINDS = ("int", "float", "duration")
KINDS = ("str", "bool", "choice", "path", "endpoint", "secret", "secret_file") + \
    NUMERIC_KINDS + LIST_KINDS

_BOOLS = {"1": True, "yes": True, "true": True, "on": True,
          "0": False, "no": False, "false": False, "off": False}
_INT_RE = re.compile(r"[+-]?[0-9]+")
_FLOAT_RE = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_DURATION_RE = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)\s*(ms|s|m|h|d)?", re.I)
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MAC_RE = re.compile(r"[0-9a-f]{2}([:-][0-9a-f]{2}){5}", re.I)

# Kinds for which an empty value is a value: the empty string, the empty list.
_TEXT_KINDS = ("str", "secret") + LIST_KINDS
_SHOW_CHARS = 60
_UNESCAPE_RE = re.compile(r"\\([\\:,])")
# A backslash pair is consumed first, so ``\\,`` is an escaped backslash then a separator.
_SPLIT_RE = re.compile(r"\\.|,", re.S)
_SYNTAX = "expected '[section]', 'key = value' or a '#' comment"


class ConfigError(Exception):
    """One configuration problem, located by file, line, section and key (any may be None)."""

    def __init__(self, file, line, section, key, message):
        super().__init__(file, line, section, key, message)
        self.file, self.line, self.section, self.key = file, line, section, key
        self.message = message

    @property
    def errors(self) -> list["ConfigError"]:
        """The individual errors: just this one (``ConfigErrors`` has several)."""
        return [self]

    def __str__(self):
        where = "<config>" if self.file is None else str(self.file)
        if self.line is not None:
            where += f":{self.line}"
        parts = [where + ":"]
        if self.section is not None:
            parts.append(f"[{self.section}]")
        if self.key is not None:
            parts.append(f"{self.key}:")
        parts.append(str(self.message))
        # One line per error: a newline in a path or message must not forge a second one.
        return " ".join(" ".join(parts).splitlines())


class ConfigErrors(ConfigError):
    """Every problem found in one load; ``str`` is the count, then one error per line."""

    def __init__(self, errors):
        errors = list(errors)
        if not errors:
            raise ValueError("ConfigErrors needs at least one error")
        first = errors[0]
        count = f"{len(errors)} configuration error{'s' if len(errors) > 1 else ''}"
        super().__init__(first.file, first.line, first.section, first.key, count)
        self._errors = errors

    @property
    def errors(self) -> list[ConfigError]:
        """The individual errors, in file order then line order."""
        return list(self._errors)

    def __str__(self):
        return "\n".join([self.message + ":"] + [str(e) for e in self._errors])

    def __reduce__(self):
        return (ConfigErrors, (self._errors,))


class Entry(NamedTuple):
    """A raw (still escaped) value and the line of its key."""

    value: str
    line: int


@dataclass
class IniFile:
    """What one file holds: raw values by section and key, and its syntax errors."""

    path: str
    sections: dict[str, dict[str, Entry]] = field(default_factory=dict)
    headers: dict[str, int] = field(default_factory=dict)  # section -> line of first header
    errors: list[ConfigError] = field(default_factory=list)
    loaded: bool = False  # False when the file could not be read at all


def show(text: str, limit: int | None = _SHOW_CHARS) -> str:
    """Admin input quoted for a one-line error message, cut to ``limit`` characters."""
    if limit is not None and len(text) > limit:
        return show(text[:limit]) + "..."
    # Not repr(): it would double the backslashes, which mean something in Medulla values.
    return "'" + "".join(c if c.isprintable() else repr(c)[1:-1] for c in text) + "'"


def unescape(text: str) -> str:
    r"""Medulla escaping: ``\:`` is ``:``, ``\,`` is ``,``, ``\\`` is ``\``; others stay."""
    return _UNESCAPE_RE.sub(r"\1", text) if "\\" in text else text


def escape(text: str) -> str:
    """The inverse of ``unescape``: what to write so a value or list item reads back as is."""
    return text.replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def split_list(text: str) -> list[str]:
    """Split a raw value on commas that are not escaped; items keep their escapes."""
    items, start = [], 0
    for match in _SPLIT_RE.finditer(text):
        if match.group() == ",":
            items.append(text[start:match.start()])
            start = match.end()
    items.append(text[start:])
    return items


def read_limited(path: str, limit: int) -> tuple[bytes, int]:
    """Content and mode of a regular file of at most ``limit`` bytes.

    Raises OSError, or ValueError for anything else than a small regular file.
    """
    # O_NONBLOCK so that a FIFO put where a file was expected is refused, not waited on.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        # The mode of what was opened, not of what the path names a moment later.
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ValueError("not a regular file")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"larger than {limit} bytes; not a configuration file")
    return data, stat.S_IMODE(mode)


def read_ini(path, *, missing_ok: bool = False) -> IniFile | None:
    """Read and parse one file; None if it is missing and ``missing_ok``."""
    path = os.fspath(path)
    try:
        data, _mode = read_limited(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        if missing_ok:
            return None
        return IniFile(path, errors=[ConfigError(path, None, None, None, "file not found")])
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return IniFile(path, errors=[ConfigError(path, None, None, None, f"cannot read: {reason}")])
    except ValueError as exc:
        return IniFile(path, errors=[ConfigError(path, None, None, None, str(exc))])
    return parse_ini(data, path)


def _decode(data: bytes, path: str) -> str | ConfigError:
    """The text of a file, or the error that says which line is not UTF-8 text."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]  # Windows editors add it; it is not content.
    nul = data.find(b"\0")
    if nul >= 0:
        line = data.count(b"\n", 0, nul) + 1
        return ConfigError(path, line, None, None, "NUL byte: this is not a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start]
        return ConfigError(path, line, None, None, f"invalid UTF-8 byte 0x{byte:02x}; "
                           "save the file as UTF-8")


def parse_ini(data: bytes, path: str = "<string>") -> IniFile:
    """Parse the bytes of one file; every problem lands in ``IniFile.errors``."""
    result = IniFile(os.fspath(path), loaded=True)
    text = _decode(data, result.path)
    if isinstance(text, ConfigError):
        result.errors.append(text)
        return result
    parts: dict[tuple[str, str], tuple[list[str], int]] = {}
    section = None
    broken = False  # after a bad header, keys belong to no known section: skip them quietly
    cont = None  # the value an indented line continues, [] to swallow, None for none

    def error(lineno, sect, key, message):
        result.errors.append(ConfigError(result.path, lineno, sect, key, message))

    for lineno, raw in enumerate(text.split("\n"), 1):
        if len(result.errors) >= MAX_ERRORS_PER_FILE:
            error(lineno, None, None, "too many errors, stopped reading this file")
            break
        line = raw.strip()
        if not line:
            cont = None  # a blank line ends a continued value
            continue
        if line[0] in "#;":
            continue
        if cont is not None and raw[0] in " \t":
            cont.append(line)
            continue
        cont = None
        if line[0] == "[":
            name = line[1:-1].strip() if line[-1] == "]" else ""
            if not name:
                error(lineno, None, None, "expected a section header like '[section]'")
                broken = True
                continue
            section, broken = name, False
            result.sections.setdefault(name, {})
            # A header repeated in one file merges into the first, as configparser does.
            result.headers.setdefault(name, lineno)
            continue
        found = [pos for pos in (line.find("="), line.find(":")) if pos >= 0]
        pos = min(found) if found else -1
        key = line[:pos].strip().lower() if pos > 0 else ""
        if not key:
            error(lineno, None, None, _SYNTAX)
            continue
        cont = []  # by default the continuation of a refused key is swallowed with it
        if broken:
            continue
        if section is None:
            error(lineno, None, key, "key outside any section; add a '[section]' line above it")
            continue
        if (section, key) in parts:
            first = parts[(section, key)][1]
            error(lineno, section, key, f"duplicate key, already set at line {first}")
            continue
        cont = [line[pos + 1:].strip()]
        parts[(section, key)] = (cont, lineno)
    for (sect, key), (lines, lineno) in parts.items():
        result.sections[sect][key] = Entry("\n".join(lines), lineno)
    return result


class InvalidValue(ValueError):
    """A value refused by its type; the message says what was expected."""


def _number(value) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def range_text(key, unit: str = "") -> str:
    """`` from 1 to 10`` (or at least/at most): the bounds of a numeric key, for messages."""
    lo = None if key.min is None else _number(key.min) + unit
    hi = None if key.max is None else _number(key.max) + unit
    if lo and hi:
        return f" from {lo} to {hi}"
    return f" of at least {lo}" if lo else (f" of at most {hi}" if hi else "")


def _in_range(key, value, text: str, expected: str):
    if not math.isfinite(value) or (key.min is not None and value < key.min) or \
            (key.max is not None and value > key.max):
        raise InvalidValue(f"expected {expected}, got {show(text)}")
    return value


def _to_number(key, text):
    pattern, cast, noun = (_INT_RE, int, "an integer") if key.kind == "int" else \
        (_FLOAT_RE, float, "a number")
    expected = noun + range_text(key)
    if not pattern.fullmatch(text):
        raise InvalidValue(f"expected {expected}, got {show(text)}")
    return _in_range(key, cast(text), text, expected)


def _to_duration(key, text):
    expected = "a duration like 500ms, 30s, 10m, 2h or 1d" + range_text(key, "s")
    match = _DURATION_RE.fullmatch(text)
    if not match:
        raise InvalidValue(f"expected {expected}, got {show(text)}")
    unit = match.group(2) and match.group(2).lower()
    return _in_range(key, float(match.group(1)) * _UNITS[unit], text, expected)


def _to_bool(key, text):
    try:
        return _BOOLS[text.lower()]
    except KeyError:
        expected = "yes/no, true/false, on/off or 1/0"
        raise InvalidValue(f"expected {expected}, got {show(text)}") from None


def _to_choice(key, text):
    for choice in key.choices:
        if choice.lower() == text.lower():
            return choice
    raise InvalidValue(f"expected one of {', '.join(key.choices)}, got {show(text)}")


def _to_path(key, text):
    if not text.startswith("/"):
        raise InvalidValue(f"expected an absolute path, got {show(text)}")
    return text


def _to_endpoint(key, text):
    kind, sep, rest = text.partition(":")
    if kind in ENDPOINT_PREFIXES and sep and rest:
        return text
    hint = ""
    if "\\:" in text:
        hint = " (endpoints keep Twisted's own escaping: write 'tcp:7080', not 'tcp\\:7080')"
    prefixes = ", ".join(p + ":" for p in ENDPOINT_PREFIXES)
    raise InvalidValue(f"expected a Twisted endpoint starting with {prefixes} (like "
                       f"'tcp:7080:interface=127.0.0.1'), got {show(text)}{hint}")


def _to_mac(key, item):
    if not _MAC_RE.fullmatch(item):
        raise InvalidValue(f"invalid MAC address {show(item)}, expected like aa:bb:cc:dd:ee:ff")
    return item.lower().replace("-", ":")


def _to_network(key, item):
    try:
        return ipaddress.ip_network(item, strict=False)
    except ValueError:
        raise InvalidValue(f"invalid network {show(item)}, expected like 10.0.0.0/8") from None


_SCALARS = {"str": lambda key, text: text, "secret": lambda key, text: text,
            "int": _to_number, "float": _to_number, "duration": _to_duration, "bool": _to_bool,
            "choice": _to_choice, "path": _to_path, "secret_file": _to_path}
_ITEMS = {"list": lambda key, item: item, "mac_list": _to_mac, "cidr_list": _to_network}


def _unique(items) -> tuple:
    return tuple(dict.fromkeys(items))


def convert(key, raw: str):
    """The typed value of a raw (escaped) value for ``key`` (a ``config.Key``).

    Raises ``InvalidValue`` saying what was expected.
    """
    if not raw and key.default is None and not key.required and key.kind not in _TEXT_KINDS:
        return None  # an empty value unsets an optional key, such as a path
    if key.kind == "endpoint":
        # Twisted endpoint strings have their own backslash escapes (``interface=\:\:1``);
        # unescaping them here would corrupt the IPv6 addresses they protect.
        return _to_endpoint(key, raw)
    if key.kind not in LIST_KINDS:
        return _SCALARS[key.kind](key, unescape(raw))
    # Split before unescaping, so that an escaped comma stays inside its item.
    items = [unescape(item.strip()) for item in split_list(raw) if item.strip()]
    to_item = _ITEMS[key.kind]
    values = []
    for number, item in enumerate(items, 1):
        try:
            values.append(to_item(key, item))
        except InvalidValue as exc:
            raise InvalidValue(f"item {number}: {exc}") from None
    return _unique([to_item(key, item) for item in key.always] + values)
