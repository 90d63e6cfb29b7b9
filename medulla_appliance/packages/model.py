"""The package descriptor's model (PROTOCOL.md, "Deployment descriptor"): limits, names,
the frozen dataclasses a parsed descriptor is made of, and the one exact byte form the
master signs and quotes (SHA-256). Parsing and validation: `descriptor.parse_descriptor`.

Beyond the protocol's list, a `script` or `command` step may carry `on_exit`: rules
`{"min", "max", "negate", "goto"}` tried in order on the exit code before `accept_codes`
decide between `on_success` and `on_error` (what Medulla's `gotoreturncode@<cond>` does).
"""

import hashlib
import json
import re
from dataclasses import dataclass
from types import MappingProxyType

SCHEMA = 1
MAX_DESCRIPTOR_BYTES = 1024 * 1024
MAX_FILES = 10_000
MAX_FILE_SIZE = 64 * 1024 ** 3
MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255
MAX_STEPS = 1000
MAX_SEQUENCES = 16
MAX_TIMEOUT = 86400
DEFAULT_TIMEOUT = 3600
MAX_WAIT = 86400
MAX_ARGV = 1024
MAX_ARG_CHARS = 128 * 1024       # Linux refuses a longer single argument or variable
MAX_ENV = 256
MAX_ACCEPT_CODES = 256
MAX_EXIT_RULES = 64
MAX_TEXT = 256
EXIT_CODE_MIN = -(2 ** 31)
EXIT_CODE_MAX = 2 ** 32 - 1      # Windows exit codes are DWORDs
DEFAULT_INTERPRETER = "/bin/sh"
END_SUCCESS, END_ERROR = "END_SUCCESS", "END_ERROR"
BUILTIN_LABELS = (END_SUCCESS, END_ERROR)
KNOWN_OS = ("linux", "windows", "macos")
STEP_TYPES = ("script", "command", "set_env", "wait", "reboot", "restart_agent",
              "end_success", "end_error")
RESERVED_PATHS = ("descriptor.json",)  # the store keeps the descriptor beside the files
#: Set by the step engine for every step after a script or command: its exit code and the
#: end of its output (Medulla's @@@PREC_RETURNCODE@@@ and @@@PREC_RESULT@@@).
PREV_RET_VARIABLE = "MEDULLA_PREV_RET"
PREV_OUTPUT_VARIABLE = "MEDULLA_PREV_OUTPUT"

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
LABEL_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}\Z")
SEQUENCE_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}\Z")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


class DescriptorError(ValueError):
    """An invalid descriptor: `path` in the JSON (dotted, `[i]` for list items) and why."""

    def __init__(self, path, message):
        super().__init__(path, message)
        self.path, self.message = path, message

    def __str__(self):
        return "%s: %s" % (self.path, self.message) if self.path else self.message


@dataclass(frozen=True)
class FileEntry:
    """One file of the package, at `path` relative to the package folder."""

    path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ExitRule:
    """Jump to `goto` when `min <= code <= max` (or outside that range if `negate`)."""

    min: int
    max: int
    negate: bool
    goto: str

    def matches(self, code):
        return (self.min <= code <= self.max) != self.negate

    def to_json(self):
        return {"min": self.min, "max": self.max, "negate": self.negate, "goto": self.goto}


@dataclass(frozen=True)
class Step:
    """One step of a sequence, defaults applied; fields a type does not use stay empty."""

    type: str
    label: str
    on_success: str = END_SUCCESS
    on_error: str = END_ERROR
    interpreter: str = ""
    body: str = ""
    argv: tuple = ()
    timeout: float = 0
    accept_codes: tuple = ()
    on_exit: tuple = ()
    env: tuple = ()          # ((name, value), ...) in the descriptor's order
    seconds: float = 0

    def to_json(self):
        out = {"type": self.type, "label": self.label}
        if self.type in ("end_success", "end_error"):
            return out
        out.update(on_success=self.on_success, on_error=self.on_error)
        if self.type == "script":
            out.update(interpreter=self.interpreter, body=self.body)
        elif self.type == "command":
            out["argv"] = list(self.argv)
        elif self.type == "set_env":
            out["env"] = dict(self.env)
        elif self.type == "wait":
            out["seconds"] = self.seconds
        if self.type in ("script", "command"):
            out.update(timeout=self.timeout, accept_codes=list(self.accept_codes),
                       on_exit=[rule.to_json() for rule in self.on_exit])
        return out


@dataclass(frozen=True)
class Descriptor:
    """A validated package descriptor. `sequences[os][name]` is a tuple of `Step`."""

    id: str
    name: str
    version: str
    os: tuple
    files: tuple
    sequences: MappingProxyType
    description: str = ""
    schema: int = SCHEMA

    def to_json(self):
        out = {"schema": self.schema, "id": self.id, "name": self.name,
               "version": self.version, "os": list(self.os),
               "files": [{"path": f.path, "sha256": f.sha256, "size": f.size}
                         for f in self.files],
               "sequences": {os_name: {name: [s.to_json() for s in steps]
                                       for name, steps in seqs.items()}
                             for os_name, seqs in self.sequences.items()}}
        if self.description:
            out["description"] = self.description
        return out


def descriptor_sha256(raw_bytes):
    """Hex SHA-256 of the exact descriptor bytes (what agents check before running)."""
    return hashlib.sha256(bytes(raw_bytes)).hexdigest()


def canonical_descriptor_bytes(descriptor):
    """The descriptor as canonical JSON (sorted keys, no spaces, UTF-8, defaults explicit)."""
    return json.dumps(descriptor.to_json(), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode("utf-8")


def check_file_path(path):
    """None when `path` is an acceptable file path in a package, else why not."""
    if not isinstance(path, str):
        return "expected a string"
    if not path:
        return "empty path"
    if "\x00" in path:
        return "NUL in path"
    if _CONTROL_RE.search(path):
        return "control character in path %r" % path[:64]
    if "\\" in path:
        return "backslash in path %r" % path[:64]
    if path.startswith("/"):
        return "absolute path %r" % path[:64]
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError:
        return "path %r is not valid Unicode" % path[:64]
    if len(encoded) > MAX_PATH_BYTES:
        return "path longer than %d bytes" % MAX_PATH_BYTES
    for part in path.split("/"):
        if part == "":
            return "empty component in path %r" % path[:64]
        if part in (".", ".."):
            return "%r component in path %r" % (part, path[:64])
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            return "component longer than %d bytes in path %r" % (MAX_COMPONENT_BYTES,
                                                                   path[:64])
    if path in RESERVED_PATHS:
        return "%r is reserved for the descriptor itself" % path
    return None
