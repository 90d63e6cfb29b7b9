"""Import an existing Medulla package folder (`conf.json` + `xmppdeploy.json` + files)
as our descriptor.

What Medulla runs (pulse_xmpp_agent/lib/grafcetdeploy.py) and what it becomes here:

| Medulla step | here |
|---|---|
| actionprocessscriptfile (typescript Batch/python/unixKornshell/unixCshell...) | script |
| actionprocessscript, action_command_natif_shell (a shell command line) | script (/bin/sh) |
| action_set_environ | set_env |
| actionwaitandgoto | wait, on_success = its goto |
| actionrestart (targetrestart MA / AM) | reboot / restart_agent |
| actionsuccescompletedend / actionerrorcompletedend | END_SUCCESS / END_ERROR |
| action_comment, action_no_operation | dropped (they only log) |
| action_section_install/update/uninstall/launch | one sequence per section |
| gotoreturncode@<cond> | on_exit rules, in the package's order |

A step's exit code: first the `gotoreturncode@` rules, then 0 goes to `success` (or the
next step), anything else to `error` or END_ERROR (recent Medulla agents flow on to the
next step: the weakness PROTOCOL.md fixes). Other step types are refused by name.
"""

import hashlib
import json
import os
import stat
from dataclasses import dataclass

from .descriptor import ID_RE, MAX_FILES, DescriptorError, check_file_path, parse_descriptor
from .medulla_sequence import MedullaSequence
from .medulla_templates import MedullaImportError

CONF = "conf.json"
XMPPDEPLOY = "xmppdeploy.json"
MAX_JSON_BYTES = 8 * 1024 * 1024
HASH_CHUNK = 1024 * 1024
MEDULLA_OS = {"linux": "linux", "win": "windows", "mac": "macos"}


@dataclass(frozen=True)
class ImportResult:
    """The converted `Descriptor` and what the import could not keep (one line each)."""

    descriptor: object
    warnings: tuple


def import_medulla_folder(folder, *, require_os="linux"):
    """Read a Medulla package folder; hash its files; `convert_medulla` the JSON.

    Raises `MedullaImportError`. Store the result with
    `PackageStore.add_from_folder(folder, result.descriptor)`.
    """
    conf = _load_json(os.path.join(folder, CONF))
    deploy = _load_json(os.path.join(folder, XMPPDEPLOY))
    return convert_medulla(conf, deploy, _folder_files(folder), require_os=require_os)


def convert_medulla(conf, deploy, files=(), *, require_os="linux"):
    """Our descriptor from Medulla's parsed `conf.json` and `xmppdeploy.json`.

    `files`: [{"path", "sha256", "size"}] of the package's files. `require_os`: the OS
    whose sequences must import (None: every OS must); other OSes that cannot be mapped
    are left out, with a warning.
    """
    if not isinstance(conf, dict):
        raise MedullaImportError(CONF, "expected a JSON object")
    if not isinstance(deploy, dict):
        raise MedullaImportError(XMPPDEPLOY, "expected a JSON object")
    info = deploy.get("info", {})
    if not isinstance(info, dict):
        raise MedullaImportError(XMPPDEPLOY + " info", "expected an object")
    warnings = []
    package_id = _first_text(conf.get("id"), info.get("packageUuid"))
    if not ID_RE.match(package_id):
        raise MedullaImportError(CONF + " id", "%r is not a usable package id" % package_id[:64])
    if info.get("packageUuid") not in (None, "", package_id):
        warnings.append("xmppdeploy.json names package %r; conf.json's id %r is used"
                        % (str(info["packageUuid"])[:64], package_id))
    name = _first_text(conf.get("name"), info.get("name"), info.get("software"), package_id)
    if len(name) > 256:
        warnings.append("name shortened to 256 characters")
        name = name[:256]
    _refuse_dependencies(conf, info)
    _note_ignored(conf, info, warnings)
    if info.get("transferfile") is False:
        warnings.append("info.transferfile is false: the package's files are not sent")
        files = ()
    context = {"package_id": package_id, "package_name": name}
    sequences = {}
    for key, value in deploy.items():
        if key in ("info", "metaparameter"):
            continue
        if not isinstance(value, dict) or "sequence" not in value:
            warnings.append("xmppdeploy.json %r ignored (not an OS with a sequence)" % key[:64])
            continue
        os_name = MEDULLA_OS.get(key)
        if os_name is None:
            raise MedullaImportError(XMPPDEPLOY + " " + key[:64], "unknown OS (Medulla knows "
                                     "%s)" % ", ".join(MEDULLA_OS))
        try:
            sequences[os_name] = MedullaSequence(value["sequence"], "%s %s.sequence"
                                           % (XMPPDEPLOY, key), os_name, context,
                                           warnings).convert()
        except MedullaImportError as e:
            if require_os is None or os_name == require_os:
                raise
            warnings.append("%s sequences left out: %s" % (os_name, e))
    if not sequences:
        raise MedullaImportError(XMPPDEPLOY, "no sequence for any OS")
    if require_os is not None and require_os not in sequences:
        raise MedullaImportError(XMPPDEPLOY, "the package has sequences for %s only; nothing "
                                 "of it can run on %s" % (", ".join(sorted(sequences)),
                                                          require_os))
    if "windows" in sequences:
        warnings.append("windows sequences are kept for reference: no agent here runs them")
    target = MEDULLA_OS.get(conf.get("targetos"))
    if conf.get("targetos") and target not in sequences:
        warnings.append("conf.json targetos %r has no sequence" % str(conf["targetos"])[:16])
    data = {"schema": 1, "id": package_id, "name": name,
            "version": _first_text(conf.get("version"), info.get("version"), "0")[:64],
            "os": sorted(sequences), "files": list(files), "sequences": sequences}
    description = _first_text(conf.get("description"), info.get("description"))
    if description:
        data["description"] = description[:4096]
    try:
        descriptor = parse_descriptor(data)
    except DescriptorError as e:
        raise MedullaImportError("converted descriptor", str(e)) from None
    return ImportResult(descriptor, tuple(dict.fromkeys(warnings)))


def _first_text(*values):
    for value in values:
        if isinstance(value, str) and value.strip():
            return value.strip()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    return ""


def _refuse_dependencies(conf, info):
    for where, value in ((CONF + " sub_packages", conf.get("sub_packages")),
                         (XMPPDEPLOY + " info.Dependency", info.get("Dependency"))):
        if value:
            raise MedullaImportError(where, "the package depends on other packages (%s); "
                                     "dependencies have no equivalent: import and deploy them "
                                     "separately, then import it without them"
                                     % json.dumps(value)[:200])


def _note_ignored(conf, info, warnings):
    if str(conf.get("reboot", "0")) not in ("0", "", "False", "false"):
        warnings.append("conf.json reboot is set: a reboot after deployment is chosen when "
                        "deploying here, not by the package")
    inventory = conf.get("inventory")
    if isinstance(inventory, dict) and str(inventory.get("associateinventory", "0")) == "1":
        warnings.append("conf.json inventory association (Qsoftware...) is not imported")
    if info.get("limit_rate_ko"):
        warnings.append("info.limit_rate_ko (bandwidth limit) is not imported")


def _load_json(path):
    name = os.path.basename(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise MedullaImportError(name, "missing") from None
    except OSError as e:
        raise MedullaImportError(name, "cannot open: %s" % e.strerror) from None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise MedullaImportError(name, "larger than %d bytes" % MAX_JSON_BYTES)
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as e:
        raise MedullaImportError(name, "not UTF-8 (byte %d)" % e.start) from None
    except (ValueError, RecursionError) as e:
        raise MedullaImportError(name, "not valid JSON: %s" % str(e)[:200]) from None


def _folder_files(folder):
    """[{"path", "sha256", "size"}] of the package's files (not its two JSON files)."""
    root = os.path.realpath(folder)
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames
                                         if os.path.islink(os.path.join(dirpath, d))]:
            full = os.path.join(dirpath, name)
            relative = os.path.relpath(full, root).replace(os.sep, "/")
            if relative in (CONF, XMPPDEPLOY, "descriptor.json"):
                continue
            info = os.lstat(full)
            if not stat.S_ISREG(info.st_mode):
                raise MedullaImportError(relative[:128], "not a regular file (symbolic link "
                                         "or device); refused")
            problem = check_file_path(relative)
            if problem:
                raise MedullaImportError(relative[:128], problem)
            if len(entries) >= MAX_FILES:
                raise MedullaImportError(folder, "more than %d files" % MAX_FILES)
            entries.append({"path": relative, "size": info.st_size, "sha256": _sha256(full)})
    return entries


def _sha256(path):
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
