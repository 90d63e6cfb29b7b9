"""One OS's Medulla `sequence` (xmppdeploy.json) as our sequences: the step table of
`medulla_import`, return-code conditions, jump targets, sections.

Medulla's agent (pulse_xmpp_agent/lib/grafcetdeploy.py) finds steps by position and
label, jumps with `success`/`succes`, `error`, `goto` and `gotoreturncode@<cond>`, and
ends a section when it reaches the marker of another.
"""

import base64
import binascii
import re

from .descriptor import (
    BUILTIN_LABELS,
    END_ERROR,
    END_SUCCESS,
    LABEL_RE,
    MAX_STEPS,
    MAX_TIMEOUT,
    MAX_WAIT,
)
from .medulla_templates import BATCH, LITERAL, SHELL, MedullaImportError, map_templates

SECTIONS = {"action_section_install": "install", "action_section_update": "update",
            "action_section_uninstall": "uninstall", "action_section_launch": "launch"}
TERMINAL = {"actionsuccescompletedend": END_SUCCESS, "actionerrorcompletedend": END_ERROR}
DROPPED = ("action_comment", "action_no_operation")
MAPPED = ("actionprocessscriptfile", "actionprocessscript", "action_command_natif_shell",
          "action_set_environ", "actionwaitandgoto", "actionrestart")
#: typescript -> (interpreter, dialect, Medulla's file suffix), per OS.
_UNIX_SCRIPTS = {"Batch": ("/bin/bash", SHELL, "sh"),
                 "python": ("/usr/bin/python3", LITERAL, "py"),
                 "unixKornshell": ("/bin/ksh", SHELL, "ksh"),
                 "unixCshell": ("/bin/csh", LITERAL, "csh")}
SCRIPT_INTERPRETERS = {
    "linux": _UNIX_SCRIPTS,
    "macos": _UNIX_SCRIPTS,
    "windows": {"Batch": ("cmd.exe", BATCH, "bat"),
                "powershell": ("powershell.exe", LITERAL, "ps1"),
                "visualbasicscript": ("cscript.exe", LITERAL, "vbs"),
                "python": ("python.exe", LITERAL, "py")},
}
COMMAND_SHELLS = {"linux": ("/bin/sh", SHELL), "macos": ("/bin/sh", SHELL),
                  "windows": ("cmd.exe", BATCH)}
#: Medulla's defaults when a step gives no timeout / waiting.
DEFAULT_TIMEOUTS = {"actionprocessscriptfile": 900, "actionprocessscript": 800,
                    "action_command_natif_shell": 15}
DEFAULT_WAITING = 10
_CONDITION_RE = re.compile(r"^(==|!=|>=|<=|>|<|=|!)?\s*(-?\d+)$")
_INTERVAL_RE = re.compile(r"^(IN|OUT)\s*(-?\d+)\s*,\s*(-?\d+)$", re.IGNORECASE)
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")


class MedullaSequence:
    """One OS's Medulla `sequence`: its steps become one of our sequences per section."""

    def __init__(self, steps, where, os_name, context, warnings):
        if not isinstance(steps, list) or not steps:
            raise MedullaImportError(where, "expected a non-empty list of steps")
        if len(steps) > MAX_STEPS:
            raise MedullaImportError(where, "more than %d steps" % MAX_STEPS)
        self.steps, self.where, self.os_name = steps, where, os_name
        self.context, self.warnings = context, warnings
        self.by_label, self.labels, self.markers = {}, [], {}
        taken = set()
        for i, step in enumerate(steps):
            at = self._at(i)
            if not isinstance(step, dict) or not isinstance(step.get("action"), str):
                raise MedullaImportError(at, "expected an object with an \"action\"")
            number = step.get("step", i)
            if str(number).strip() != str(i):
                raise MedullaImportError(at, "step number %r is not its position %d (Medulla "
                                         "finds steps by position)" % (number, i))
            label = step.get("actionlabel")
            if label is not None:
                if not isinstance(label, str):
                    raise MedullaImportError(at + ".actionlabel", "expected a string")
                if label in self.by_label:
                    raise MedullaImportError(at + ".actionlabel", "label %r also names step %d"
                                             % (label[:64], self.by_label[label]))
                self.by_label[label] = i
            ours = label if (isinstance(label, str) and LABEL_RE.match(label)
                             and label not in BUILTIN_LABELS and label not in taken) else None
            ours = ours or _free("step%d" % i, taken)
            taken.add(ours)
            self.labels.append(ours)
            action = step["action"]
            if action in SECTIONS:
                if SECTIONS[action] in self.markers:
                    raise MedullaImportError(at, "a second %s" % action)
                self.markers[SECTIONS[action]] = i
            elif action not in MAPPED and action not in DROPPED and action not in TERMINAL:
                raise MedullaImportError(at, "step type %r has no equivalent here (mapped: %s)"
                                         % (action[:64], ", ".join(MAPPED + tuple(TERMINAL))))

    def _at(self, i):
        return "%s[%d]" % (self.where, i)

    def convert(self):
        converted = {i: self._step(i) for i, step in enumerate(self.steps)
                     if step["action"] in MAPPED}
        starts = {"install": self.markers.get("install", -1) + 1}
        starts.update((name, index + 1) for name, index in self.markers.items())
        return {name: self._section(start, converted) for name, start in starts.items()}

    def _section(self, start, converted):
        first = self._landing(start) if start < len(self.steps) else END_SUCCESS
        if first in BUILTIN_LABELS:
            kind = "end_success" if first == END_SUCCESS else "end_error"
            return [{"type": kind, "label": kind}]
        reachable, todo = set(), [first]
        while todo:
            i = todo.pop()
            if i in reachable or i in BUILTIN_LABELS:
                continue
            reachable.add(i)
            todo.extend(converted[i]["_targets"])
        order = sorted(reachable, key=lambda i: (i < first, i))
        out = []
        for i in order:
            step = {k: v for k, v in converted[i].items() if k != "_targets"}
            for key in ("on_success", "on_error"):
                step[key] = self._label(step[key])
            if "on_exit" in step:
                step["on_exit"] = [dict(rule, goto=self._label(rule["goto"]))
                                   for rule in step["on_exit"]]
            out.append(step)
        return out

    def _label(self, target):
        return target if target in BUILTIN_LABELS else self.labels[target]

    def _landing(self, i, at=None):
        """Where control really goes when Medulla jumps to step `i`."""
        seen = set()
        while True:
            if i >= len(self.steps):
                return END_SUCCESS
            if i in seen:
                raise MedullaImportError(at or self._at(i), "jumps loop through steps that "
                                         "do nothing")
            seen.add(i)
            action = self.steps[i]["action"]
            if action in TERMINAL:
                return TERMINAL[action]
            if action in SECTIONS:
                return END_SUCCESS       # reaching another section ends this one
            if action not in DROPPED:
                return i
            i += 1

    def _target(self, ref, i, at):
        """Step index (or END_*) that a Medulla reference from step `i` leads to."""
        if ref is None or ref == "next":
            return self._landing(i + 1, at)
        if isinstance(ref, bool) or not isinstance(ref, (int, str)):
            raise MedullaImportError(at, "expected a step number or label, got %r" % (ref,))
        if isinstance(ref, int) or ref.strip().lstrip("-").isdigit():
            number = int(ref)
            if not 0 <= number < len(self.steps):
                raise MedullaImportError(at, "no step %d" % number)
            return self._landing(number, at)
        if ref in self.by_label:
            return self._landing(self.by_label[ref], at)
        if ref in BUILTIN_LABELS:
            return ref
        raise MedullaImportError(at, "no step labelled %r" % ref[:64])

    def _step(self, i):
        step, at = self.steps[i], self._at(i)
        action = step["action"]
        out = {"label": self.labels[i], "on_error": END_ERROR}
        if action == "action_set_environ":
            out.update(type="set_env", env=self._environ(step, at))
        elif action == "actionwaitandgoto":
            out.update(type="wait", seconds=self._seconds(step.get("waiting", DEFAULT_WAITING),
                                                          at + ".waiting", MAX_WAIT, 0))
            out["on_success"] = self._target(step.get("goto"), i, at + ".goto")
        elif action == "actionrestart":
            # Medulla carries on with the next step after the restart, whatever `goto` says.
            out["type"] = "restart_agent" if step.get("targetrestart") == "AM" else "reboot"
        else:
            out.update(self._script(step, action, at))
            if "error" in step:
                out["on_error"] = self._target(step["error"], i, at + ".error")
            success = step.get("success", step.get("succes"))
            out["on_success"] = self._target(success, i, at + ".success")
            out["on_exit"] = [dict(rule, goto=self._target(target, i, "%s.%s" % (at, key)))
                              for key, rule, target in self._exit_rules(step, at)]
        out.setdefault("on_success", self._target(None, i, at))
        targets = [out["on_success"], out["on_error"]]
        targets += [rule["goto"] for rule in out.get("on_exit", ())]
        out["_targets"] = [t for t in targets if t not in BUILTIN_LABELS]
        return out

    def _script(self, step, action, at):
        package = step.get("packageuuid")
        if package not in (None, "", self.context["package_id"]):
            raise MedullaImportError(at + ".packageuuid", "runs in another package's folder "
                                     "(%r); no equivalent" % str(package)[:64])
        if action == "actionprocessscriptfile":
            typescript = step.get("typescript")
            table = SCRIPT_INTERPRETERS[self.os_name]
            if typescript is None:
                raise MedullaImportError(at + ".typescript", "missing: which interpreter runs "
                                         "the script? (Medulla fails on it too)")
            if typescript not in table:
                raise MedullaImportError(at + ".typescript", "%r has no interpreter on %s "
                                         "(known: %s)" % (typescript, self.os_name,
                                                          ", ".join(table)))
            interpreter, dialect, suffix = table[typescript]
            if typescript == "python" and self.os_name != "windows":
                self.warnings.append("python scripts run with /usr/bin/python3 (Medulla "
                                     "called `python`)")
            body = self._text(step, "script", at)
            suffix = step.get("suffix") or suffix
        else:
            interpreter, dialect = COMMAND_SHELLS[self.os_name]
            body, suffix = self._text(step, "command", at), None
        body = map_templates(body, at, os_name=self.os_name, dialect=dialect, **self.context)
        if suffix is not None and suffix not in ("bat", "ps1") and "\\" in body:
            # grafcetdeploy writes such script files with every backslash doubled; the
            # package was written (and tested) against that, so it is kept.
            body = body.replace("\\", "\\\\")
            self.warnings.append("%s: backslashes doubled, as Medulla writes script files "
                                 "on this OS" % at)
        timeout = step.get("timeout", DEFAULT_TIMEOUTS[action])
        return {"type": "script", "interpreter": interpreter, "body": body,
                "timeout": self._seconds(timeout, at + ".timeout", MAX_TIMEOUT, 1),
                "accept_codes": [0]}

    def _text(self, step, key, at):
        value = step.get(key)
        if not isinstance(value, str):
            raise MedullaImportError("%s.%s" % (at, key), "missing or not a string")
        return _maybe_base64(value)

    def _environ(self, step, at):
        environ = step.get("environ")
        if not isinstance(environ, dict):
            raise MedullaImportError(at + ".environ", "expected an object of variables")
        env = {}
        for name, value in environ.items():
            where = "%s.environ.%s" % (at, str(name)[:64])
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = str(value)
            if not isinstance(value, str):
                raise MedullaImportError(where, "expected a string value")
            mapped_name = map_templates(name, where, os_name=self.os_name, dialect=LITERAL,
                                        **self.context)
            env[mapped_name] = map_templates(value, where, os_name=self.os_name,
                                             dialect=LITERAL, **self.context)
        return env

    def _seconds(self, value, at, high, low):
        try:
            seconds = float(value)
        except (TypeError, ValueError, OverflowError):
            seconds = float("nan")
        if isinstance(value, bool) or seconds != seconds or seconds in (float("inf"),
                                                                         float("-inf")):
            raise MedullaImportError(at, "expected a number of seconds, got %r"
                                     % (str(value)[:32],))
        if not low <= seconds <= high:
            self.warnings.append("%s: %s s brought within %d..%d s" % (at, value, low, high))
            seconds = min(max(seconds, low), high)
        return int(seconds) if seconds == int(seconds) else seconds

    def _exit_rules(self, step, at):
        """(key, rule without goto, target) for each gotoreturncode@<cond>, in order."""
        for key, target in step.items():
            if key.startswith("gotoreturncode@"):
                yield key, parse_condition(key.partition("@")[2], "%s.%s" % (at, key)), target


def parse_condition(text, where=""):
    """A Medulla `gotoreturncode@` condition (n, ==n, =n, !=n, !n, <n, <=n, >n, >=n,
    INa,b, OUTa,b) as an on_exit rule {"min", "max", "negate"}."""
    text = text.strip()
    interval = _INTERVAL_RE.match(text)
    if interval:
        low, high = int(interval.group(2)), int(interval.group(3))
        if low > high:
            raise MedullaImportError(where, "interval %r starts above its end" % text)
        return {"min": low, "max": high, "negate": interval.group(1).upper() == "OUT"}
    m = _CONDITION_RE.match(text)
    if not m:
        raise MedullaImportError(where, "condition %r is not n, ==n, !=n, <n, <=n, >n, >=n, "
                                 "INa,b or OUTa,b" % text[:32])
    op, n = m.group(1) or "==", int(m.group(2))
    return {"==": {"min": n, "max": n}, "=": {"min": n, "max": n},
            "!=": {"min": n, "max": n, "negate": True}, "!": {"min": n, "max": n, "negate": True},
            "<": {"max": n - 1}, "<=": {"max": n}, ">": {"min": n + 1}, ">=": {"min": n}}[op]


def _maybe_base64(text):
    """Medulla's console stores scripts and commands base64-encoded; plain ones stay."""
    compact = text.strip()
    if len(compact) % 4 or not _BASE64_RE.match(compact):
        return text
    try:
        decoded = base64.b64decode(compact, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return text
    if any(ord(c) < 32 and c not in "\t\r\n" for c in decoded):
        return text
    return decoded


def _free(label, taken):
    candidate, n = label, 1
    while candidate in taken:
        n += 1
        candidate = "%s_%d" % (label, n)
    return candidate
