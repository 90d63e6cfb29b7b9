"""Layered, typed INI configuration: the one way every Medulla daemon reads its settings.

``load("/etc/medulla/master.ini", SCHEMA)`` reads the packaged file, then the admin's
``master.ini.local``, then ``master.d/*.ini`` in name order, each overriding key by key. The
schema is data (``Schema`` of ``Key``), so the same declaration checks values, supplies
defaults and renders the documented ``etc/*.ini`` (``Schema.defaults_ini``). Every problem
of every file is collected and raised at once as ``ConfigErrors``, one line per problem.
"""

import difflib
import math
import os
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass

from medulla_appliance.core.ini import (
    KINDS,
    LIST_KINDS,
    MAX_ERRORS_PER_FILE,
    NUMERIC_KINDS,
    ConfigError,
    ConfigErrors,
    IniFile,
    InvalidValue,
    convert,
    range_text,
    read_ini,
    read_limited,
    show,
)

__all__ = ["Config", "ConfigError", "ConfigErrors", "Key", "Schema", "load"]

MAX_SECRET_BYTES = 64 * 1024
MASK = "***"
DEFAULT_ORIGIN = ("default", None)


@dataclass(frozen=True)
class Key:
    """One typed key: its kind (see ``KINDS``), default, bounds, choices and help text.

    A ``str`` default is read like a value in a file (escapes included); other defaults are
    typed values. ``always`` items are part of a list whatever the admin writes.
    """

    kind: str
    default: object = None
    _: KW_ONLY
    required: bool = False
    min: float | None = None
    max: float | None = None
    choices: tuple = ()
    always: tuple = ()
    help: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown key kind {self.kind!r}; one of {', '.join(KINDS)}")
        if (self.min is not None or self.max is not None) and self.kind not in NUMERIC_KINDS:
            raise ValueError(f"min/max apply to {', '.join(NUMERIC_KINDS)}, not {self.kind}")
        if bool(self.choices) != (self.kind == "choice"):
            raise ValueError("a choice key needs choices, and only a choice key has them")
        if self.always and self.kind not in LIST_KINDS:
            raise ValueError(f"always applies to {', '.join(LIST_KINDS)}, not {self.kind}")
        if self.required and self.default is not None:
            raise ValueError("a required key has no default")


def _default_text(value) -> str:
    """A typed default written as it would be in a file."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item).replace("\\", "\\\\").replace(",", "\\,") for item in value)
    return str(value)


def _suggest(name: str, known) -> str:
    """``; did you mean 'x'?`` for the closest known name, ignoring case, or nothing."""
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean {lowered[close[0]]!r}?" if close else ""


class Schema:
    """The sections and typed keys of one daemon's INI file; defaults are checked at import."""

    def __init__(self, sections: Mapping[str, Mapping[str, Key]]):
        self.sections = {name: dict(keys) for name, keys in sections.items()}
        self.defaults: dict[str, dict[str, object]] = {}
        self._texts: dict[tuple[str, str], str | None] = {}
        for section, keys in self.sections.items():
            self.defaults[section] = {}
            for name, key in keys.items():
                if name != name.lower():
                    raise ValueError(f"[{section}] {name}: key names are lower case")
                if name.endswith("_path") and key.kind not in ("path", "secret_file"):
                    raise ValueError(f"[{section}] {name}: a *_path key is a path or secret_file")
                text = None if key.default is None else _default_text(key.default)
                self._texts[section, name] = text
                if key.required:
                    continue
                if text is None and key.always:
                    text = ""  # the always items alone
                try:
                    value = None if text is None else convert(key, text)
                except ValueError as exc:
                    raise ValueError(f"[{section}] {name}: bad default: {exc}") from None
                self.defaults[section][name] = value

    def defaults_ini(self) -> str:
        """An INI text with every section and key, commented with its type, help and default."""
        out = ["# Generated from the schema. Every key shows its default, commented out;",
               "# change values in the .local file beside this one, not here."]
        for section, keys in self.sections.items():
            out += ["", f"[{section}]"]
            for name, key in keys.items():
                out.append("")
                out += [f"# {line}".rstrip() for line in key.help.splitlines()]
                out.append(f"# {self._describe(section, name, key)}")
                text = "" if key.kind == "secret" else self._texts[section, name] or ""
                first, *more = text.split("\n")
                out.append(f"#{name} = {first}".rstrip())
                out += [f"#    {line}" for line in more]
        return "\n".join(out) + "\n"

    def _describe(self, section: str, name: str, key: Key) -> str:
        parts = [key.kind + range_text(key, "s" if key.kind == "duration" else "")]
        if key.choices:
            parts.append("one of " + ", ".join(key.choices))
        if key.always:
            parts.append("always includes " + ", ".join(map(str, key.always)))
        if key.required:
            parts.append("required")
        elif key.kind == "secret" and key.default is not None:
            parts.append("default hidden")
        elif self._texts[section, name] is None:
            parts.append("no default")
        return "; ".join(parts)


class Section(Mapping):
    """The typed values of one section; its repr masks secrets."""

    def __init__(self, values: dict, secrets: frozenset):
        self._values, self._secrets = values, secrets

    def __getitem__(self, key):
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self):
        return len(self._values)

    def masked(self) -> dict:
        """The values as a dict, secrets replaced by ``***``."""
        return {k: MASK if k in self._secrets and v is not None else v
                for k, v in self._values.items()}

    def __repr__(self):
        return f"Section({self.masked()!r})"


class Config:
    """A loaded configuration: ``cfg["xmpp"]["port"]``, where each value came from, secrets."""

    def __init__(self, schema: Schema, path: str, values: dict, origins: dict, files: list):
        self._schema, self._path, self._origins = schema, path, origins
        self._files = list(files)
        self._sections = {
            name: Section(values[name], frozenset(k for k, key in keys.items()
                                                  if key.kind == "secret"))
            for name, keys in schema.sections.items()}

    def __getitem__(self, section: str) -> Section:
        return self._sections[section]

    def __iter__(self):
        return iter(self._sections)

    def __contains__(self, section):
        return section in self._sections

    def get(self, section: str, key: str):
        """The typed value of one key (KeyError if the schema does not declare it)."""
        return self._sections[section][key]

    def origin(self, section: str, key: str) -> tuple[str, int | None]:
        """``(file, line)`` that set the key, or ``("default", None)``."""
        self._sections[section][key]  # noqa: B018 - KeyError for an undeclared key
        return self._origins.get((section, key), DEFAULT_ORIGIN)

    @property
    def files(self) -> list[str]:
        """The files actually read, in the order they were applied."""
        return list(self._files)

    def as_dict(self) -> dict:
        """``{section: {key: value}}`` with secrets shown as ``***``."""
        return {name: section.masked() for name, section in self._sections.items()}

    def __repr__(self):
        return f"Config(files={self._files!r}, values={self.as_dict()!r})"

    def read_secret(self, section: str, key: str) -> str:
        """The stripped content of the file a ``secret_file`` key names; raises ConfigError."""
        if self._schema.sections[section][key].kind != "secret_file":
            raise TypeError(f"[{section}] {key} is not a secret_file key")
        file, line = self.origin(section, key)
        if file == DEFAULT_ORIGIN[0]:
            file = self._path

        def fail(message):
            return ConfigError(file, line, section, key, message)

        path = self.get(section, key)
        if path is None:
            raise fail("no secret file configured")
        name = show(path, None)  # the whole name: a cut one would not say which file
        try:
            data, mode = read_limited(path, MAX_SECRET_BYTES)
        except OSError as exc:
            raise fail(f"cannot read secret file {name}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise fail(f"secret file {name}: {exc}") from None
        # The rule ssh applies to private keys: nobody but the owner may even look.
        if mode & 0o077:
            raise fail(f"secret file {name} has mode {mode:04o}; only its owner may access it "
                       "(chmod 600)")
        try:
            secret = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise fail(f"secret file {name} is not UTF-8 text") from None
        if not secret:
            raise fail(f"secret file {name} is empty")
        return secret


def layer_paths(path: str) -> tuple[str, str]:
    """The admin override file and the drop-in folder that go with ``path``."""
    base = path[:-len(".ini")] if path.endswith(".ini") else path
    return path + ".local", base + ".d"


def _dropins(folder: str, errors: list) -> list[str]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        errors.append(ConfigError(folder, None, None, None,
                                  f"cannot list: {getattr(exc, 'strerror', None) or exc}"))
        return []
    # Hidden files and dpkg leftovers (*.ini.dpkg-dist) are not configuration.
    return [os.path.join(folder, n) for n in sorted(names)
            if n.endswith(".ini") and not n.startswith(".")]


def _check(ini: IniFile, schema: Schema, values: dict, origins: dict):
    """Yield the schema errors of one file, laying its valid values over the earlier ones."""
    for section, entries in ini.sections.items():
        keys = schema.sections.get(section)
        if keys is None:
            yield ConfigError(ini.path, ini.headers[section], section, None,
                              "unknown section" + _suggest(section, schema.sections))
            continue
        for name, entry in entries.items():
            key = keys.get(name)
            if key is None:
                yield ConfigError(ini.path, entry.line, section, name,
                                  "unknown key" + _suggest(name, keys))
                continue
            origins[section, name] = (ini.path, entry.line)
            try:
                values[section][name] = convert(key, entry.value)
            except InvalidValue as exc:
                yield ConfigError(ini.path, entry.line, section, name, str(exc))


def _apply(ini: IniFile, schema: Schema, values: dict, origins: dict, errors: list):
    """Check one file and apply its values; its errors join ``errors`` in line order."""
    found = list(ini.errors)
    if len(found) < MAX_ERRORS_PER_FILE:
        for error in _check(ini, schema, values, origins):
            if len(found) >= MAX_ERRORS_PER_FILE:
                # Thousands of unknown names mean a wrong file, and would bury the rest.
                found.append(ConfigError(ini.path, None, None, None,
                                         "too many errors, stopped checking this file"))
                break
            found.append(error)
    errors += sorted(found, key=lambda e: math.inf if e.line is None else e.line)


def load(path, schema: Schema, *, required: bool = True) -> Config:
    """Read ``path``, ``path.local`` and ``<path minus .ini>.d/*.ini``, checked by ``schema``.

    Raises ``ConfigErrors`` listing every problem of every file; nothing else for bad
    content. A missing main file is one of them unless ``required`` is False.
    """
    path = os.fspath(path)
    local, folder = layer_paths(path)
    errors: list[ConfigError] = []
    values = {section: dict(defaults) for section, defaults in schema.defaults.items()}
    origins: dict[tuple[str, str], tuple[str, int]] = {}
    files = []
    inis = [read_ini(path, missing_ok=not required), read_ini(local, missing_ok=True)]
    inis += [read_ini(dropin, missing_ok=True) for dropin in _dropins(folder, errors)]
    for ini in inis:
        if ini is None:
            continue
        if ini.loaded:
            files.append(ini.path)
        _apply(ini, schema, values, origins, errors)
    for section, keys in schema.sections.items():
        for name, key in keys.items():
            if key.required and (section, name) not in origins:
                errors.append(ConfigError(path, None, section, name,
                                          "required key is missing; set it in " + local))
    if errors:
        raise ConfigErrors(errors)
    return Config(schema, path, values, origins, files)
