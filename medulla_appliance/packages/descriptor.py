"""The package descriptor (PROTOCOL.md, "Deployment descriptor"): parse and validate a
`descriptor.json` into the frozen dataclasses of `model` (re-exported here).

Pure functions: no I/O besides the bytes or dict a caller passes. Every refusal is a
`DescriptorError` whose text is one line naming where in the JSON it is, e.g.
`sequences.linux.install[2].on_error: unknown label 'FOO'`.
"""

import json
import math
import re
from types import MappingProxyType

from .model import (
    _CONTROL_RE,
    BUILTIN_LABELS,
    DEFAULT_INTERPRETER,
    DEFAULT_TIMEOUT,
    END_ERROR,
    END_SUCCESS,
    ENV_NAME_RE,
    EXIT_CODE_MAX,
    EXIT_CODE_MIN,
    ID_RE,
    KNOWN_OS,
    LABEL_RE,
    MAX_ACCEPT_CODES,
    MAX_ARG_CHARS,
    MAX_ARGV,
    MAX_COMPONENT_BYTES,
    MAX_DESCRIPTOR_BYTES,
    MAX_ENV,
    MAX_EXIT_RULES,
    MAX_FILE_SIZE,
    MAX_FILES,
    MAX_PATH_BYTES,
    MAX_SEQUENCES,
    MAX_STEPS,
    MAX_TEXT,
    MAX_TIMEOUT,
    MAX_WAIT,
    PREV_OUTPUT_VARIABLE,
    PREV_RET_VARIABLE,
    RESERVED_PATHS,
    SCHEMA,
    SEQUENCE_RE,
    SHA256_RE,
    STEP_TYPES,
    Descriptor,
    DescriptorError,
    ExitRule,
    FileEntry,
    Step,
    canonical_descriptor_bytes,
    check_file_path,
    descriptor_sha256,
)

# The model's names are part of this module's interface: import them from here.
__all__ = ["parse_descriptor", "BUILTIN_LABELS", "DEFAULT_INTERPRETER", "DEFAULT_TIMEOUT",
    "END_ERROR", "END_SUCCESS", "ENV_NAME_RE", "EXIT_CODE_MAX", "EXIT_CODE_MIN", "ID_RE",
    "KNOWN_OS", "LABEL_RE", "MAX_ACCEPT_CODES", "MAX_ARG_CHARS", "MAX_ARGV",
    "MAX_COMPONENT_BYTES", "MAX_DESCRIPTOR_BYTES", "MAX_ENV", "MAX_EXIT_RULES", "MAX_FILE_SIZE",
    "MAX_FILES", "MAX_PATH_BYTES", "MAX_SEQUENCES", "MAX_STEPS", "MAX_TEXT", "MAX_TIMEOUT",
    "MAX_WAIT", "PREV_OUTPUT_VARIABLE", "PREV_RET_VARIABLE", "RESERVED_PATHS", "SCHEMA",
    "SEQUENCE_RE", "SHA256_RE", "STEP_TYPES", "Descriptor", "DescriptorError", "ExitRule",
    "FileEntry", "Step", "canonical_descriptor_bytes", "check_file_path", "descriptor_sha256"]

_PLAIN_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
_COMMON_KEYS = ("type", "label", "on_success", "on_error")
_STEP_KEYS = {
    "script": _COMMON_KEYS + ("interpreter", "body", "timeout", "accept_codes", "on_exit"),
    "command": _COMMON_KEYS + ("argv", "timeout", "accept_codes", "on_exit"),
    "set_env": _COMMON_KEYS + ("env",),
    "wait": _COMMON_KEYS + ("seconds",),
    "reboot": _COMMON_KEYS,
    "restart_agent": _COMMON_KEYS,
    "end_success": ("type", "label"),
    "end_error": ("type", "label"),
}
_TOP_KEYS = ("schema", "id", "name", "version", "description", "os", "files", "sequences")


def parse_descriptor(data):
    """A `Descriptor` from a dict or from raw JSON bytes/str, or `DescriptorError`."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = _load_json(bytes(data))
    top = _dict(data, "")
    _known_keys(top, "", _TOP_KEYS)
    schema = top.get("schema")
    if schema != SCHEMA or not _is_int(schema):
        raise DescriptorError("schema", "expected %d, got %s" % (SCHEMA, _show(schema)))
    package_id = _text(top, "id", "", required=True, limit=128)
    if not ID_RE.match(package_id):
        raise DescriptorError("id", "invalid package id %r (letters, digits, '.', '_', '-'; "
                              "starting with a letter or digit; at most 128)" % package_id[:64])
    oses = _os_list(top.get("os"), "os")
    return Descriptor(
        id=package_id,
        name=_text(top, "name", "", required=True),
        version=_text(top, "version", "", required=True, limit=64),
        description=_text(top, "description", "", limit=4096, multiline=True),
        os=oses,
        files=_files(top.get("files"), "files"),
        sequences=_sequences(top.get("sequences"), "sequences", oses))


# -- helpers --------------------------------------------------------------------------


def _load_json(raw):
    if len(raw) > MAX_DESCRIPTOR_BYTES:
        raise DescriptorError("", "descriptor is %d bytes; at most %d are accepted"
                              % (len(raw), MAX_DESCRIPTOR_BYTES))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DescriptorError("", "not UTF-8 (byte %d)" % e.start) from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys,
                          parse_constant=_no_constant)
    except DescriptorError:
        raise
    except (ValueError, RecursionError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DescriptorError("", "not valid JSON: %s" % message[:200]) from None


def _no_duplicate_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            # Two readers could pick different values: refuse what a signature covers.
            raise DescriptorError("", "duplicate key %r in an object" % key[:64])
        out[key] = value
    return out


def _no_constant(name):
    raise DescriptorError("", "not valid JSON: %s is not a number" % name)


def _join(path, key):
    shown = key if isinstance(key, str) and _PLAIN_KEY_RE.match(key) else repr(str(key)[:64])
    return "%s.%s" % (path, shown) if path else shown


def _show(value):
    text = repr(value)
    return text if len(text) <= 64 else text[:61] + "..."


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _dict(value, path):
    if not isinstance(value, dict):
        raise DescriptorError(path, "expected an object, got %s" % type(value).__name__)
    return value


def _known_keys(obj, path, allowed):
    for key in obj:
        if key not in allowed:
            raise DescriptorError(_join(path, key), "unknown key (allowed: %s)"
                                  % ", ".join(allowed))


def _check_text(value, path, limit, multiline=False, empty=True):
    if not isinstance(value, str):
        raise DescriptorError(path, "expected a string, got %s" % type(value).__name__)
    if len(value) > limit:
        raise DescriptorError(path, "longer than %d characters" % limit)
    if not empty and not value:
        raise DescriptorError(path, "must not be empty")
    if "\x00" in value:
        raise DescriptorError(path, "NUL character")
    if not multiline and _CONTROL_RE.search(value):
        raise DescriptorError(path, "control character in %r" % value[:64])
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DescriptorError(path, "not valid Unicode (lone surrogate)") from None
    return value


def _text(obj, key, path, *, required=False, limit=MAX_TEXT, multiline=False, default=""):
    where = _join(path, key)
    if key not in obj:
        if required:
            raise DescriptorError(where, "missing")
        return default
    return _check_text(obj[key], where, limit, multiline, empty=not required)


def _os_list(value, path):
    if not isinstance(value, list) or not value:
        raise DescriptorError(path, "expected a non-empty list of %s" % "|".join(KNOWN_OS))
    for i, name in enumerate(value):
        if name not in KNOWN_OS:
            raise DescriptorError("%s[%d]" % (path, i), "unknown OS %s (known: %s)"
                                  % (_show(name), ", ".join(KNOWN_OS)))
    if len(set(value)) != len(value):
        raise DescriptorError(path, "an OS is listed twice")
    return tuple(value)


def _files(value, path):
    if value is None:
        value = []
    if not isinstance(value, list):
        raise DescriptorError(path, "expected a list")
    if len(value) > MAX_FILES:
        raise DescriptorError(path, "%d files; at most %d" % (len(value), MAX_FILES))
    entries, seen = [], set()
    for i, item in enumerate(value):
        where = "%s[%d]" % (path, i)
        obj = _dict(item, where)
        _known_keys(obj, where, ("path", "sha256", "size"))
        for key in ("path", "sha256", "size"):
            if key not in obj:
                raise DescriptorError(_join(where, key), "missing")
        problem = check_file_path(obj["path"])
        if problem:
            raise DescriptorError(_join(where, "path"), problem)
        if obj["path"] in seen:
            raise DescriptorError(_join(where, "path"), "duplicate path %r" % obj["path"][:64])
        seen.add(obj["path"])
        sha = obj["sha256"]
        if not isinstance(sha, str) or not SHA256_RE.match(sha):
            raise DescriptorError(_join(where, "sha256"), "expected 64 lowercase hex digits")
        size = obj["size"]
        if not _is_int(size) or not 0 <= size <= MAX_FILE_SIZE:
            raise DescriptorError(_join(where, "size"), "expected an integer from 0 to %d"
                                  % MAX_FILE_SIZE)
        entries.append(FileEntry(obj["path"], sha, size))
    # "a" and "a/b" cannot both be files: one would have to be a folder.
    folders = {p.rsplit("/", n)[0] for p in seen for n in range(1, p.count("/") + 1)}
    for i, entry in enumerate(entries):
        if entry.path in folders:
            raise DescriptorError("%s[%d].path" % (path, i), "%r is also the folder of another "
                                  "file" % entry.path[:64])
    return tuple(entries)


def _sequences(value, path, oses):
    obj = _dict(value, path)
    for os_name in obj:
        if os_name not in oses:
            raise DescriptorError(_join(path, os_name), "OS not listed in \"os\"")
    out = {}
    for os_name in oses:
        where = _join(path, os_name)
        if os_name not in obj:
            raise DescriptorError(where, "missing (every listed OS needs its sequences)")
        seqs = _dict(obj[os_name], where)
        if "install" not in seqs:
            raise DescriptorError(_join(where, "install"), "missing")
        if len(seqs) > MAX_SEQUENCES:
            raise DescriptorError(where, "more than %d sequences" % MAX_SEQUENCES)
        parsed = {}
        for name, steps in seqs.items():
            if not SEQUENCE_RE.match(name):
                raise DescriptorError(_join(where, name), "invalid sequence name (lowercase "
                                      "letters, digits, '_')")
            parsed[name] = _sequence(steps, _join(where, name))
        out[os_name] = MappingProxyType(parsed)
    return MappingProxyType(out)


def _sequence(value, path):
    if not isinstance(value, list):
        raise DescriptorError(path, "expected a list of steps")
    if not value:
        raise DescriptorError(path, "at least one step is needed")
    if len(value) > MAX_STEPS:
        raise DescriptorError(path, "%d steps; at most %d" % (len(value), MAX_STEPS))
    objs, labels = [], {}
    for i, item in enumerate(value):
        where = "%s[%d]" % (path, i)
        obj = _dict(item, where)
        label = obj.get("label", "step%d" % (i + 1))
        if not isinstance(label, str) or not LABEL_RE.match(label):
            raise DescriptorError(_join(where, "label"), "invalid label %s (letters, digits, "
                                  "'_', '.', ':', '-'; at most 64)" % _show(label))
        if label in BUILTIN_LABELS:
            raise DescriptorError(_join(where, "label"), "%r is reserved" % label)
        if label in labels:
            raise DescriptorError(_join(where, "label"), "duplicate label %r (also step %d)"
                                  % (label, labels[label]))
        labels[label] = i
        objs.append((where, obj, label))
    names = [label for _, _, label in objs]
    steps = []
    for i, (where, obj, label) in enumerate(objs):
        following = names[i + 1] if i + 1 < len(names) else END_SUCCESS
        steps.append(_step(obj, where, label, following, labels))
    return tuple(steps)


def _target(obj, key, where, default, labels):
    value = obj.get(key, default)
    if not isinstance(value, str) or (value not in labels and value not in BUILTIN_LABELS):
        raise DescriptorError(_join(where, key), "unknown label %s" % _show(value))
    return value


def _step(obj, where, label, following, labels):
    kind = obj.get("type")
    if "type" not in obj:
        raise DescriptorError(_join(where, "type"), "missing")
    if kind not in STEP_TYPES:
        raise DescriptorError(_join(where, "type"), "unknown step type %s (known: %s)"
                              % (_show(kind), ", ".join(STEP_TYPES)))
    _known_keys(obj, where, _STEP_KEYS[kind])
    if kind in ("end_success", "end_error"):
        return Step(kind, label, END_SUCCESS, END_ERROR)
    fields = {"on_success": _target(obj, "on_success", where, following, labels),
              "on_error": _target(obj, "on_error", where, END_ERROR, labels)}
    if kind == "script":
        if "interpreter" in obj:
            _check_text(obj["interpreter"], _join(where, "interpreter"), 4096, empty=False)
        fields["interpreter"] = obj.get("interpreter", DEFAULT_INTERPRETER)
        if "body" not in obj:
            raise DescriptorError(_join(where, "body"), "missing")
        fields["body"] = _check_text(obj["body"], _join(where, "body"),
                                     MAX_DESCRIPTOR_BYTES, multiline=True)
    elif kind == "command":
        fields["argv"] = _argv(obj.get("argv"), _join(where, "argv"))
    elif kind == "set_env":
        fields["env"] = _env(obj.get("env"), _join(where, "env"))
    elif kind == "wait":
        seconds = obj.get("seconds")
        if not _is_number(seconds) or not 0 <= seconds <= MAX_WAIT:
            raise DescriptorError(_join(where, "seconds"), "expected a number of seconds "
                                  "from 0 to %d" % MAX_WAIT)
        fields["seconds"] = seconds
    if kind in ("script", "command"):
        timeout = obj.get("timeout", DEFAULT_TIMEOUT)
        if not _is_number(timeout) or not 0 < timeout <= MAX_TIMEOUT:
            raise DescriptorError(_join(where, "timeout"), "expected seconds, more than 0 and "
                                  "at most %d" % MAX_TIMEOUT)
        fields["timeout"] = timeout
        fields["accept_codes"] = _codes(obj.get("accept_codes", [0]),
                                        _join(where, "accept_codes"))
        fields["on_exit"] = _exit_rules(obj.get("on_exit", []), _join(where, "on_exit"),
                                        labels)
    return Step(kind, label, **fields)


def _argv(value, path):
    if not isinstance(value, list) or not value:
        raise DescriptorError(path, "expected a non-empty list of strings")
    if len(value) > MAX_ARGV:
        raise DescriptorError(path, "more than %d arguments" % MAX_ARGV)
    for i, arg in enumerate(value):
        _check_text(arg, "%s[%d]" % (path, i), MAX_ARG_CHARS, multiline=True)
    if not value[0]:
        raise DescriptorError("%s[0]" % path, "the program must not be empty")
    return tuple(value)


def _env(value, path):
    obj = _dict(value, path)
    if len(obj) > MAX_ENV:
        raise DescriptorError(path, "more than %d variables" % MAX_ENV)
    pairs = []
    for name, text in obj.items():
        if not ENV_NAME_RE.match(name) or len(name) > MAX_TEXT:
            raise DescriptorError(_join(path, name), "invalid variable name %r" % name[:64])
        _check_text(text, _join(path, name), MAX_ARG_CHARS, multiline=True)
        pairs.append((name, text))
    return tuple(pairs)


def _exit_code(value, path):
    if not _is_int(value) or not EXIT_CODE_MIN <= value <= EXIT_CODE_MAX:
        raise DescriptorError(path, "expected an integer exit code from %d to %d, got %s"
                              % (EXIT_CODE_MIN, EXIT_CODE_MAX, _show(value)))
    return value


def _codes(value, path):
    if not isinstance(value, list) or not value:
        raise DescriptorError(path, "expected a non-empty list of exit codes")
    if len(value) > MAX_ACCEPT_CODES:
        raise DescriptorError(path, "more than %d codes" % MAX_ACCEPT_CODES)
    return tuple(_exit_code(code, "%s[%d]" % (path, i)) for i, code in enumerate(value))


def _exit_rules(value, path, labels):
    if not isinstance(value, list):
        raise DescriptorError(path, "expected a list of rules")
    if len(value) > MAX_EXIT_RULES:
        raise DescriptorError(path, "more than %d rules" % MAX_EXIT_RULES)
    rules = []
    for i, item in enumerate(value):
        where = "%s[%d]" % (path, i)
        obj = _dict(item, where)
        _known_keys(obj, where, ("min", "max", "negate", "goto"))
        low = _exit_code(obj.get("min", EXIT_CODE_MIN), _join(where, "min"))
        high = _exit_code(obj.get("max", EXIT_CODE_MAX), _join(where, "max"))
        if low > high:
            raise DescriptorError(where, "min %d is above max %d" % (low, high))
        negate = obj.get("negate", False)
        if not isinstance(negate, bool):
            raise DescriptorError(_join(where, "negate"), "expected true or false")
        if "goto" not in obj:
            raise DescriptorError(_join(where, "goto"), "missing")
        rules.append(ExitRule(low, high, negate, _target(obj, "goto", where, None, labels)))
    return tuple(rules)
