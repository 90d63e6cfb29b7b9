"""Medulla's `@@@NAME@@@` templates (and `@_@VAR@_@` environment references), mapped to
what a step can use here.

Medulla's agent (pulse_xmpp_agent/lib/grafcetdeploy.py, `replaceTEMPLATE`) replaces them
in the text of a script or command just before running it. Here:

- values known when the package is imported (its name and id, the OS's separators) are
  written into the text, as Medulla would;
- values the agent knows at run time become environment variables (`RUNTIME_VARIABLES`:
  the agent sets them for every step); in a shell script the template becomes `${VAR}`,
  written so that it expands in the quoting context where the template stood (inside
  single quotes: `'"${VAR}"'`); in a Windows batch `%VAR%`;
- the clock templates become `$(date ...)` in shell scripts, evaluated when the step runs;
- the rest (deployment parameters, Windows registry reads, agent plugin calls, unknown
  names) is refused, naming the template and why.
"""

import bisect
import re

from .descriptor import ENV_NAME_RE, PREV_OUTPUT_VARIABLE, PREV_RET_VARIABLE


class MedullaImportError(ValueError):
    """A Medulla package we cannot import faithfully: `where` (file and JSON path) and why."""

    def __init__(self, where, message):
        super().__init__(where, message)
        self.where, self.message = where, message

    def __str__(self):
        return "%s: %s" % (self.where, self.message) if self.where else self.message


#: Medulla template -> the variable the agent sets for each step (PREC_* by the engine).
RUNTIME_VARIABLES = {
    "PACKAGE_DIRECTORY_ABS_MACHINE": "MEDULLA_PACKAGE_DIR",
    "WORKING_DIR": "MEDULLA_PACKAGE_DIR",   # steps run in the package's folder
    "SESSION_ID": "MEDULLA_SESSION_ID",
    "HOSTNAME": "MEDULLA_HOSTNAME",
    "FQDN": "MEDULLA_FQDN",
    "JID_MASTER": "MEDULLA_JID_MASTER",
    "JID_RELAYSERVER": "MEDULLA_JID_RELAY",
    "JID_MACHINE": "MEDULLA_JID_MACHINE",
    "IP_MACHINE": "MEDULLA_IP_MACHINE",
    "IP_MACHINE_XMPP": "MEDULLA_IP_MACHINE",
    "IP_RELAYSERVER": "MEDULLA_IP_RELAY",
    "IP_MASTER": "MEDULLA_IP_MASTER",
    "ARCHI_MACHINE": "MEDULLA_ARCH",
    "OS_COMPLET_NAME": "MEDULLA_OS_NAME",
    "OS_VERSION": "MEDULLA_OS_VERSION",
    "KERNEL_VERSION": "MEDULLA_KERNEL_VERSION",
    "LIST_INTERFACE_NET": "MEDULLA_INTERFACES",
    "LIST_INTERFACE_NET_NO_LOOP": "MEDULLA_INTERFACES_NO_LOOP",
    "LIST_MAC_ADRESS": "MEDULLA_MACS",
    "LIST_IP_ADRESS": "MEDULLA_IPS",
    "TMP_DIR": "MEDULLA_TMP_DIR",
    "EXEC_USER": "MEDULLA_USER",
    "HOME_DIR": "MEDULLA_HOME",
    "PYTHON_PATH": "MEDULLA_PYTHON",
    "TIMEZONE": "MEDULLA_TIMEZONE",
    "PREC_RESULT": PREV_OUTPUT_VARIABLE,
    "PREC_RETURNCODE": PREV_RET_VARIABLE,
}

#: Evaluated when the step runs, as Medulla does (UTC, like its NOW_* values).
CLOCK_COMMANDS = {
    "NOW_EPOCH": "date +%s",
    "NOW_ISO8601": "date -u +%Y-%m-%dT%H:%M:%SZ",
    "DATE_YYYYMMDD": "date -u +%Y%m%d",
    "TIME_HHMMSS": "date -u +%H%M%S",
}

_STATIC_BY_OS = {
    "linux": {"OS_FAMILY": "Linux", "PATH_SEP": "/", "LINE_SEP": "\n",
              "NULL_DEVICE": "/dev/null"},
    "macos": {"OS_FAMILY": "Darwin", "PATH_SEP": "/", "LINE_SEP": "\n",
              "NULL_DEVICE": "/dev/null"},
    "windows": {"OS_FAMILY": "Windows", "PATH_SEP": "\\", "LINE_SEP": "\r\n",
                "NULL_DEVICE": "nul"},
}

_PARAMETERS = "deployment parameters have no equivalent: deploy.start carries none"
_REFUSED = {
    "DYNAMIC_PARAM_DEPLOY": _PARAMETERS,
    "UPDATE_LINUX": "it calls Medulla's update_linux_command agent plugin",
    "DEPLOY": "it calls Medulla's update_linux_command agent plugin",
    "MAC_ADRESS_MACHINE_XMPP": "Medulla itself no longer replaces it",
}
_REFUSED_PREFIXES = {
    "DYNAMIC_PARAM_DEPLOY_": _PARAMETERS,
    "ADVANCED_PARAM_DEPLOY_": _PARAMETERS,
    "MERGED_DEPLOY_PARAMS_": _PARAMETERS,
    "PLUGIN_CALL_": "it calls a Medulla agent plugin",
    "DEPLOY_ACTION_": "it calls a Medulla agent plugin",
}

_TEMPLATE_RE = re.compile(
    r"@@@DYNAMIC_PARAM@@@(?P<param>[^\n]*?)@@@"
    r"|@@@(?P<reg>VRW|TRW)@@@[^\n]*?@@@(?P=reg)@@@"
    r"|@@@(?P<name>[A-Za-z_][^@\n]{0,127}?)@@@"
    r"|@_@(?P<env>[^\n]*?)@_@")

#: Dialects: how a runtime value is written into the text.
SHELL, BATCH, LITERAL = "shell", "batch", "literal"


def map_templates(text, where, *, package_id, package_name, os_name, dialect):
    """`text` with every Medulla template mapped, or `MedullaImportError`.

    `dialect`: SHELL (sh, bash, ksh), BATCH (Windows cmd) or LITERAL (the text is used as
    it is, e.g. an environment value or a Python script: only static values fit).
    """
    matches = list(_TEMPLATE_RE.finditer(text))
    if not matches:
        return text
    static = dict(_STATIC_BY_OS[os_name], PACKAGE_NAME=package_name, UUID_PACKAGE=package_id,
                  PYTHON_IMPLEMENTATION="CPython")
    contexts = None
    pieces, last = [], 0
    for m in matches:
        kind, value = _classify(m, static, where)
        if kind == "static":
            replacement = value
        else:
            if dialect == LITERAL:
                raise MedullaImportError(where, "template %s needs a value known only when "
                                         "the step runs; it cannot be mapped in this kind "
                                         "of script or field%s" % (m.group(0)[:80], _hint(kind,
                                                                                  value)))
            if dialect == BATCH:
                if kind != "env":
                    raise MedullaImportError(where, "template %s cannot be mapped in a "
                                             "Windows batch" % m.group(0))
                replacement = "%" + value + "%"
            else:
                if contexts is None:
                    contexts = _shell_contexts(text, [x.span() for x in matches])
                replacement = _shell_expansion(kind, value, contexts[m.start()], m.group(0),
                                               where)
        pieces.append(text[last:m.start()])
        pieces.append(replacement)
        last = m.end()
    pieces.append(text[last:])
    return "".join(pieces)


def _hint(kind, value):
    if kind == "env":
        return " (read the environment variable %s instead)" % value
    return ""


def _classify(m, static, where):
    """("static", text) | ("env", variable) | ("clock", command), or refused."""
    if m.group("param") is not None:
        raise MedullaImportError(where, "template %s: %s" % (m.group(0)[:80], _PARAMETERS))
    if m.group("reg"):
        raise MedullaImportError(where, "template %s reads the Windows registry; no "
                                 "equivalent" % m.group(0)[:80])
    if m.group("env") is not None:
        name = m.group("env")
        if not ENV_NAME_RE.match(name):
            raise MedullaImportError(where, "@_@%s@_@: not an environment variable name"
                                     % name[:64])
        return "env", name
    name = m.group("name")
    if name in static:
        return "static", static[name]
    if name in RUNTIME_VARIABLES:
        return "env", RUNTIME_VARIABLES[name]
    if name in CLOCK_COMMANDS:
        return "clock", CLOCK_COMMANDS[name]
    reason = _REFUSED.get(name) or next(
        (why for prefix, why in _REFUSED_PREFIXES.items() if name.startswith(prefix)), None)
    raise MedullaImportError(where, "template %s: %s" % (
        m.group(0)[:80], reason or "unknown template; Medulla would leave it as it is"))


def _shell_expansion(kind, value, context, template, where):
    expansion = "${%s}" % value if kind == "env" else "$(%s)" % value
    if context == "plain":
        return expansion
    if context == "single":
        return "'\"%s\"'" % expansion     # close the quote, expand in double quotes, reopen
    reasons = {"escaped": "it follows a backslash",
               "ansi": "it is inside $'...' quotes",
               "quoted-heredoc": "it is inside a quoted here-document (<<'EOF')"}
    raise MedullaImportError(where, "template %s cannot be mapped: %s" % (template,
                                                                         reasons[context]))


# -- where does a template stand in a shell script? -------------------------------------


def _shell_contexts(text, spans):
    """{span start: context} for the (start, end) spans of `text`, a POSIX shell script.

    Contexts: "plain" (unquoted, in double quotes, `$( )`, backquotes, a here-document with
    an unquoted delimiter, a comment), "single" (in single quotes), "ansi" (bash `$'...'`),
    "quoted-heredoc", "escaped" (right after a backslash). A small lexer: nesting of
    quotes, `$( )`, arithmetic and backquotes is followed; `case` patterns may confuse the
    `$( )` depth, which only ever swaps one "plain" for another.
    """
    starts = dict(spans)
    span_starts = sorted(starts)
    out, stack, pending = {}, ["N"], []
    i, n = 0, len(text)
    while i < n:
        top = stack[-1]
        if i in starts:
            out[i] = {"S": "single", "A": "ansi"}.get(top, "plain")
            i = starts[i]
            continue
        c = text[i]
        if top == "S":
            if c == "'":
                stack.pop()
            i += 1
            continue
        if c == "\\":
            if i + 1 in starts:
                out[i + 1] = "escaped"
                i = starts[i + 1]
            else:
                i += 2
            continue
        if top == "A":
            if c == "'":
                stack.pop()
            i += 1
            continue
        if top == "D":
            if c == '"':
                stack.pop()
            elif text.startswith("$(", i):
                stack.append("C")
                i += 1
            elif c == "`":
                stack.append("B")
            i += 1
            continue
        # Unquoted: top level ("N"), inside $( ) ("C"), arithmetic ("M"), backquotes ("B").
        if c == "'":
            stack.append("S")
        elif c == '"':
            stack.append("D")
        elif text.startswith("$'", i):
            stack.append("A")
            i += 1
        elif text.startswith("$((", i) or (text.startswith("((", i) and top in ("N", "C")):
            stack += ["M", "M"]      # no here-document in 1 << 2
            i += 1 + (c == "$")
        elif text.startswith("$(", i):
            stack.append("C")
            i += 1
        elif c == "(" and top in ("C", "M"):
            stack.append(top)
        elif c == ")" and top in ("C", "M"):
            stack.pop()
        elif c == "`":
            if top == "B":
                stack.pop()
            else:
                stack.append("B")
        elif c == "#" and (i == 0 or text[i - 1] in " \t\n;&|()"):
            end = text.find("\n", i)
            end = n if end < 0 else end
            _mark(out, span_starts, i, end, lambda s: "plain")
            i = end
            continue
        elif text.startswith("<<<", i):
            i += 3
            continue
        elif text.startswith("<<", i) and top in ("N", "C"):
            i = _heredoc_operator(text, i + 2, pending)
            continue
        elif c == "\n" and pending and top == "N":
            i = _heredoc_bodies(text, i + 1, pending, out, span_starts)
            pending.clear()
            continue
        i += 1
    return out


def _mark(out, span_starts, begin, end, context_of):
    for s in span_starts[bisect.bisect_left(span_starts, begin):
                         bisect.bisect_left(span_starts, end)]:
        out[s] = context_of(s)


def _heredoc_operator(text, i, pending):
    """Read `[-] WORD` after `<<`; queue the here-document; return where the word ends."""
    n = len(text)
    strip = i < n and text[i] == "-"
    i += strip
    while i < n and text[i] in " \t":
        i += 1
    word, quoted = [], False
    while i < n and text[i] not in " \t\n;|&<>()":
        c = text[i]
        if c in "'\"":
            end = text.find(c, i + 1)
            end = n if end < 0 else end
            word.append(text[i + 1:end])
            quoted, i = True, end + 1
        elif c == "\\":
            word.append(text[i + 1:i + 2])
            quoted, i = True, i + 2
        else:
            word.append(c)
            i += 1
    if word:
        pending.append(("".join(word), quoted, strip))
    return i


def _heredoc_bodies(text, i, pending, out, span_starts):
    """Skip the bodies of the queued here-documents starting at `i`, marking templates."""
    n = len(text)
    for delimiter, quoted, strip in pending:
        while i < n:
            end = text.find("\n", i)
            end = n if end < 0 else end
            line = text[i:end]
            if (line.lstrip("\t") if strip else line) == delimiter:
                i = end + 1
                break
            _mark(out, span_starts, i, end, lambda s, quoted=quoted: (
                "quoted-heredoc" if quoted
                else "escaped" if _backslashes_before(text, s) % 2 else "plain"))
            i = end + 1
    return i


def _backslashes_before(text, i):
    count = 0
    while i > count and text[i - count - 1] == "\\":
        count += 1
    return count
