"""The API's package, deployment and audit routes, over the real package store (in a
temporary folder, its calls run inline) and a fake deployment coordinator."""

import hashlib
import json
import os
import shutil
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.logger import formatEvent, globalLogPublisher

from medulla_appliance.master import api, api_deploy
from medulla_appliance.master.deployments import DeploymentError
from medulla_appliance.master.logic import scheduler
from medulla_appliance.master.logic.scheduler import FINAL
from medulla_appliance.packages.store import PackageStore
from tests.unit.api_harness import NOW, FakeRegistry, Harness

DEP = "dep-0123456789abcdef"


def inline(function, *args, **kwargs):
    """run_in_thread for tests: the store's blocking call, right now."""
    return defer.maybeDeferred(function, *args, **kwargs)


def make_package(folder, package_id="firefox", version="128.0", files=None):
    """A native package folder: descriptor.json and its files."""
    files = {"install.sh": b"#!/bin/sh\necho installed\n"} if files is None else files
    os.makedirs(folder, exist_ok=True)
    for path, data in files.items():
        with open(os.path.join(folder, path), "wb") as f:
            f.write(data)
    descriptor = {
        "schema": 1, "id": package_id, "name": "Firefox ESR", "version": version,
        "os": ["linux"],
        "files": [{"path": p, "sha256": hashlib.sha256(d).hexdigest(), "size": len(d)}
                  for p, d in files.items()],
        "sequences": {"linux": {"install": [
            {"type": "script", "label": "run", "body": "sh install.sh"}]}}}
    with open(os.path.join(folder, "descriptor.json"), "w") as f:
        json.dump(descriptor, f)
    return str(folder)


def target(uuid, hostname, state=scheduler.STARTED, **extra):
    t = {"uuid": uuid, "hostname": hostname, "relay": "master", "state": state,
         "attempts": 1, "session": f"{DEP}:{uuid}:1", "step": "run", "detail": "",
         "updated_at": NOW - 5}
    t.update(extra)
    return t


class FakeDeployments:
    """The coordinator's API-facing methods, recording calls."""

    def __init__(self):
        self.calls = []
        self.deployments = {DEP: {
            "id": DEP, "package_id": "firefox", "package_name": "Firefox ESR",
            "package_version": "128.0", "sequence": "install", "start_at": NOW - 60,
            "end_at": NOW + 86400, "max_per_relay": 10, "retries": 1, "created_at": NOW - 60,
            "stopped": 0,
            "targets": [target("m-1", "ws-01", scheduler.SUCCESS),
                        target("m-2", "ws-02"),
                        target("m-3", "dup", scheduler.PENDING, attempts=0),
                        target("m-4", "dup", scheduler.EXECUTION_ERROR)]}}
        self.audits = {(DEP, "m-2"): [
            {"ts": NOW - 10, "session": "", "kind": "state", "label": scheduler.PENDING,
             "ok": None, "ret": None, "output": ""},
            {"ts": NOW - 5, "session": f"{DEP}:m-2:1", "kind": "step", "label": "run",
             "ok": 0, "ret": 2, "output": "\x1b[2Jno space left\n"}]}

    def _dep(self, dep_id):
        if dep_id not in self.deployments:
            raise DeploymentError("no deployment %r" % dep_id)
        return self.deployments[dep_id]

    def create(self, package_id, names, **options):
        self.calls.append(("create", package_id, list(names), options))
        if "ghost" in names:
            return defer.fail(DeploymentError("no machine named 'ghost'"))
        dep = {"id": "dep-fedcba9876543210", "package_id": package_id, **options}
        self.deployments[dep["id"]] = {**dep, "targets": [target(f"m-{n}", n) for n in names]}
        return defer.succeed(dep)

    def stop_deployment(self, dep_id):
        self.calls.append(("stop", dep_id))
        return defer.maybeDeferred(self._dep, dep_id).addCallback(lambda _: None)

    def restart_deployment(self, dep_id):
        self.calls.append(("restart", dep_id))
        return defer.maybeDeferred(self._dep, dep_id).addCallback(lambda _: 2)

    def summary(self):
        self.calls.append(("summary",))
        out = []
        for dep in self.deployments.values():
            states = {}
            for t in dep["targets"]:
                states[t["state"]] = states.get(t["state"], 0) + 1
            out.append({k: v for k, v in dep.items() if k != "targets"} | {"states": states})
        return defer.succeed(out)

    def active_for_package(self, package_id):
        self.calls.append(("active_for_package", package_id))
        return defer.succeed(sorted(
            dep_id for dep_id, dep in self.deployments.items()
            if dep["package_id"] == package_id
            and any(t["state"] not in FINAL for t in dep["targets"])))

    def details(self, dep_id):
        self.calls.append(("details", dep_id))
        return defer.maybeDeferred(lambda: dict(self._dep(dep_id)))

    def audit(self, dep_id, uuid):
        self.calls.append(("audit", dep_id, uuid))
        return defer.succeed(self.audits.get((dep_id, uuid), []))


@pytest.fixture
def events():
    captured = []
    globalLogPublisher.addObserver(captured.append)
    yield captured
    globalLogPublisher.removeObserver(captured.append)


@pytest.fixture
def store(tmp_path):
    return PackageStore(str(tmp_path / "store"))


@pytest.fixture
def deployments():
    return FakeDeployments()


@pytest.fixture
def http(store, deployments):
    harness = Harness(FakeRegistry(), deployments=deployments, packages=store,
                      run_in_thread=inline)
    yield harness
    harness.close()


def post_json(http, target, body, **kwargs):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(target, body=data, headers=["Content-Type: application/json"], **kwargs)


def info_lines(events):
    return [formatEvent(e) for e in events
            if e.get("log_level") and e["log_level"].name == "info"
            and e.get("log_format", "").startswith("API: ")]


# -- packages --------------------------------------------------------------------------

def test_add_a_native_package_then_list_and_show_it(http, tmp_path, events):
    folder = make_package(tmp_path / "src", files={"install.sh": b"x" * 10, "data.bin": b"y" * 5})
    r = post_json(http, "/api/v1/packages", {"path": folder})
    assert r.code == 201
    assert r.header("location") == "/api/v1/packages/firefox"
    summary = {"id": "firefox", "name": "Firefox ESR", "version": "128.0", "os": ["linux"],
               "files": 2, "size": 15}
    assert r.json == summary
    assert http.get("/api/v1/packages").json == {"packages": [summary]}
    shown = http.get("/api/v1/packages/firefox").json
    assert shown["id"] == "firefox" and shown["schema"] == 1
    assert [f["path"] for f in shown["files"]] == ["install.sh", "data.bin"]
    assert shown["sequences"]["linux"]["install"][0]["label"] == "run"
    assert info_lines(events) == [
        f"API: 127.0.0.1:40000 added package firefox (Firefox ESR 128.0, 2 files, 15 bytes) "
        f"from {folder}"]


def test_adding_an_existing_package_is_409_unless_replace(http, tmp_path, store):
    post_json(http, "/api/v1/packages", {"path": make_package(tmp_path / "v1")})
    v2 = make_package(tmp_path / "v2", version="129.0")
    r = post_json(http, "/api/v1/packages", {"path": v2})
    assert r.code == 409 and r.json["error"] == "exists"
    assert "already exists" in r.json["message"]
    assert store.get("firefox").version == "128.0"
    r = post_json(http, "/api/v1/packages", {"path": v2, "replace": True, "format": "native"})
    assert r.code == 201 and r.json["version"] == "129.0"
    assert store.get("firefox").version == "129.0"


def test_a_package_whose_file_does_not_match_is_400_naming_the_file(http, tmp_path, store):
    folder = make_package(tmp_path / "src")
    with open(os.path.join(folder, "install.sh"), "ab") as f:
        f.write(b"tampered")
    r = post_json(http, "/api/v1/packages", {"path": folder})
    assert r.code == 400 and r.json["error"] == "bad-package"
    assert r.json["message"].startswith("install.sh: larger than")
    assert store.list() == []


def test_a_bad_descriptor_is_400_saying_where(http, tmp_path):
    folder = make_package(tmp_path / "src")
    with open(os.path.join(folder, "descriptor.json")) as f:
        descriptor = json.load(f)
    descriptor["sequences"]["linux"]["install"][0]["on_error"] = "NOWHERE"
    with open(os.path.join(folder, "descriptor.json"), "w") as f:
        json.dump(descriptor, f)
    r = post_json(http, "/api/v1/packages", {"path": folder})
    assert r.code == 400
    assert r.json == {"error": "bad-package", "message": "descriptor: sequences.linux."
                      "install[0].on_error: unknown label 'NOWHERE'"}


@pytest.mark.parametrize("path,expected", [
    ("/root/pkgs/firefox-does-not-exist", "cannot see anything under /root"),
    ("/tmp/medulla-test-nowhere/pkg", "cannot see anything under /tmp"),
    ("/srv/medulla-test-nowhere", "no folder /srv/medulla-test-nowhere on the master"),
])
def test_a_folder_the_daemon_cannot_see_is_400_saying_why(http, path, expected):
    r = post_json(http, "/api/v1/packages", {"path": path})
    assert r.code == 400 and expected in r.json["message"]
    if "/srv" in path:
        assert "ProtectHome" not in r.json["message"]
    else:
        assert "ProtectHome=yes" in r.json["message"] and "/srv" in r.json["message"]


def test_a_folder_the_daemon_cannot_read_names_its_user(http, tmp_path, monkeypatch):
    folder = make_package(tmp_path / "src")

    def denied(path):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(api_deploy.os, "listdir", denied)
    monkeypatch.setattr(api_deploy, "_user", lambda: "medulla")
    r = post_json(http, "/api/v1/packages", {"path": folder})
    assert r.code == 400
    assert r.json["message"].startswith(f"medulla-master (user medulla) cannot read {folder}:")
    assert "chgrp -R medulla" in r.json["message"]


def test_an_unreadable_file_in_the_package_names_the_daemon_user(http, tmp_path, monkeypatch):
    folder = make_package(tmp_path / "src")
    real_open = os.open

    def open_denied(path, flags, *args):
        if str(path).endswith("install.sh") and str(folder) in str(path):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args)
    monkeypatch.setattr(os, "open", open_denied)
    monkeypatch.setattr(api_deploy, "_user", lambda: "medulla")
    r = post_json(http, "/api/v1/packages", {"path": folder})
    assert r.code == 400
    assert r.json["message"] == ("install.sh: cannot open (Permission denied) — medulla-master "
                                 "runs as user medulla: make every file of the package "
                                 "readable by medulla")


SAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "data", "packages")


def test_a_medulla_package_is_converted_then_stored(http, store, events):
    folder = os.path.realpath(os.path.join(SAMPLES, "medulla-linux-returncodes"))
    r = post_json(http, "/api/v1/packages", {"path": folder, "format": "medulla"})
    assert r.code == 201
    assert r.json["id"] == "7b2e9c41-install-with-return-codes"
    assert r.json["files"] == 1 and r.json["warnings"] == []
    assert store.list() == ["7b2e9c41-install-with-return-codes"]
    shown = http.get("/api/v1/packages/7b2e9c41-install-with-return-codes").json
    assert shown["files"][0]["path"] == "sampletool.deb"


def test_what_a_medulla_import_cannot_keep_comes_back_as_warnings(http, tmp_path, events):
    folder = tmp_path / "pkg"
    shutil.copytree(os.path.join(SAMPLES, "medulla-linux-returncodes"), folder)
    deploy = json.loads((folder / "xmppdeploy.json").read_text())
    deploy["info"]["limit_rate_ko"] = 512
    (folder / "xmppdeploy.json").write_text(json.dumps(deploy))
    r = post_json(http, "/api/v1/packages", {"path": str(folder), "format": "medulla"})
    assert r.code == 201
    assert r.json["warnings"] == ["info.limit_rate_ko (bandwidth limit) is not imported"]
    assert info_lines(events)[-1].endswith(f"from {folder}; 1 import warnings")


def test_a_medulla_package_we_cannot_convert_is_400_saying_where(http, store):
    folder = os.path.realpath(os.path.join(SAMPLES, "medulla-hostile-unknown-template"))
    r = post_json(http, "/api/v1/packages", {"path": folder, "format": "medulla"})
    assert r.code == 400 and r.json["error"] == "bad-package"
    assert r.json["message"] == (
        f"Medulla package {folder}: xmppdeploy.json linux.sequence[0]: template "
        "@@@MAC_ADRESS_MACHINE_XMPP@@@: Medulla itself no longer replaces it")
    assert store.list() == []


def test_a_medulla_file_the_daemon_cannot_read_is_400_naming_it(http, tmp_path, monkeypatch):
    folder = tmp_path / "pkg"
    shutil.copytree(os.path.join(SAMPLES, "medulla-linux-returncodes"), folder)
    real_open = os.open

    def open_denied(path, flags, *args):
        if str(path).endswith("sampletool.deb"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args)
    monkeypatch.setattr(os, "open", open_denied)
    monkeypatch.setattr(api_deploy, "_user", lambda: "medulla")
    r = post_json(http, "/api/v1/packages", {"path": str(folder), "format": "medulla"})
    assert r.code == 400
    assert r.json["message"].startswith(
        f"medulla-master (user medulla) cannot read {folder}/sampletool.deb: make the package "
        "folder and its files readable by medulla")


@pytest.mark.parametrize("body,message", [
    (b"path=/srv/pkg", "the request body is not UTF-8 JSON"),
    (b"\xff\xfe", "the request body is not UTF-8 JSON"),
    (b"", "the request body is empty; a JSON object is expected"),
    (b'["/srv/pkg"]', "the request body must be a JSON object"),
    ({"path": "relative/pkg"}, "'path' must be an absolute folder path, got 'relative/pkg'"),
    ({"path": "/srv/p\x00kg"}, "'path' must be an absolute folder path, got '/srv/p\\x00kg'"),
    ({"path": 12}, "'path' must be a non-empty string of at most 4096 characters"),
    ({}, "'path' must be a non-empty string of at most 4096 characters"),
    ({"path": "/srv/pkg", "replace": "yes"}, "'replace' must be true or false"),
    ({"path": "/srv/pkg", "format": "msi"}, "'format' must be one of native, medulla"),
    ({"path": "/srv/pkg", "force": True}, "unknown field 'force' (known: path, replace, format)"),
])
def test_bad_package_bodies_are_400_and_touch_nothing(http, store, body, message):
    r = post_json(http, "/api/v1/packages", body)
    assert r.code == 400
    assert r.json == {"error": "bad-request", "message": message}
    assert store.list() == []


@pytest.mark.parametrize("name", ["ghost", "..", "a%2F..%2F..%2Fetc", ".hidden", "x" * 200])
def test_unknown_or_impossible_package_ids_are_404(http, name):
    for method in ("GET", "DELETE"):
        r = http.request(method, "/api/v1/packages/" + name, headers=["Content-Length: 0"])
        assert r.code == 404 and r.json["error"] == "not-found"


def test_remove_a_package(http, tmp_path, store, deployments, events):
    post_json(http, "/api/v1/packages", {"path": make_package(tmp_path / "s", "notepad")})
    r = http.request("DELETE", "/api/v1/packages/notepad")
    assert r.code == 200 and r.json == {"id": "notepad", "removed": True}
    assert store.list() == []
    assert "API: 127.0.0.1:40000 removed package notepad" in info_lines(events)


def test_a_package_an_active_deployment_uses_cannot_be_removed(http, tmp_path, store,
                                                               deployments):
    post_json(http, "/api/v1/packages", {"path": make_package(tmp_path / "s")})
    r = http.request("DELETE", "/api/v1/packages/firefox")
    assert r.code == 409 and r.json["error"] == "in-use"
    assert r.json["deployments"] == [DEP]
    assert r.json["message"] == f"package 'firefox' is used by active deployment {DEP}; " \
                                "stop it first"
    assert store.list() == ["firefox"]
    for t in deployments.deployments[DEP]["targets"]:
        t["state"] = scheduler.STOPPED
    assert http.request("DELETE", "/api/v1/packages/firefox").code == 200
    assert store.list() == []


@pytest.mark.parametrize("target,allow", [
    ("/api/v1/packages", "GET, HEAD, POST"), ("/api/v1/packages/firefox", "GET, HEAD, DELETE"),
    ("/api/v1/deployments", "GET, HEAD, POST"), (f"/api/v1/deployments/{DEP}", "GET, HEAD"),
    (f"/api/v1/deployments/{DEP}/stop", "POST"), (f"/api/v1/deployments/{DEP}/restart", "POST"),
    (f"/api/v1/deployments/{DEP}/machines/ws-01/audit", "GET, HEAD")])
def test_each_route_answers_405_with_its_methods(http, deployments, target, allow):
    r = http.request("PUT", target, headers=["Content-Length: 0"])
    assert r.code == 405 and r.header("allow") == allow
    names = allow.split(", ")
    joined = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    assert r.json["message"] == f"only {joined} {'is' if len(names) == 1 else 'are'} " \
                                "supported here"
    assert deployments.calls == []


# -- deployments -----------------------------------------------------------------------

@pytest.fixture
def firefox(http, tmp_path):
    assert post_json(http, "/api/v1/packages",
                     {"path": make_package(tmp_path / "firefox")}).code == 201


def test_create_a_deployment(http, firefox, deployments, events):
    r = post_json(http, "/api/v1/deployments", {
        "package": "firefox", "targets": ["ws-01", "group:accounting"], "start": NOW + 60,
        "end": NOW + 7200, "max_per_relay": 5, "retries": 3, "sequence": "install"})
    assert r.code == 201
    assert r.header("location") == "/api/v1/deployments/dep-fedcba9876543210"
    assert r.json["id"] == "dep-fedcba9876543210" and r.json["target_count"] == 2
    assert deployments.calls[0] == ("create", "firefox", ["ws-01", "group:accounting"], {
        "start_at": NOW + 60, "end_at": NOW + 7200, "max_per_relay": 5, "retries": 3,
        "sequence": "install"})
    assert info_lines(events)[-1] == (
        "API: 127.0.0.1:40000 created deployment dep-fedcba9876543210 of package firefox "
        "to 2 machines (ws-01 group:accounting)")


def test_create_with_defaults(http, firefox, deployments):
    r = post_json(http, "/api/v1/deployments", {"package": "firefox", "targets": ["ws-01"],
                                                "start": None, "end": None})
    assert r.code == 201
    assert deployments.calls[0][3] == {"start_at": None, "end_at": None, "max_per_relay": 10,
                                       "retries": 1, "sequence": "install"}


@pytest.mark.parametrize("change,message", [
    ({"targets": []}, "'targets' must be a list of 1 to 10000 machine names or 'group:NAME', "
                      "each at most 255 characters"),
    ({"targets": "ws-01"}, "'targets' must be a list"),
    ({"targets": ["ws-01", 7]}, "'targets' must be a list"),
    ({"targets": [""]}, "'targets' must be a list"),
    ({"targets": ["x" * 256]}, "'targets' must be a list"),
    ({"targets": ["group:"]}, "'group:' needs a group name"),
    ({"package": "../etc"}, "'package' is not a package id: '../etc'"),
    ({"package": None}, "'package' must be a non-empty string"),
    ({"max_per_relay": 0}, "'max_per_relay' must be an integer from 1 to 10000"),
    ({"max_per_relay": True}, "'max_per_relay' must be an integer"),
    ({"max_per_relay": "5"}, "'max_per_relay' must be an integer"),
    ({"max_per_relay": 2.5}, "'max_per_relay' must be an integer"),
    ({"retries": -1}, "'retries' must be an integer from 0 to 100"),
    ({"start": "tomorrow"}, "'start' must be epoch seconds or null"),
    ({"start": -5}, "'start' must be epoch seconds or null"),
    ({"end": 1e300}, "'end' must be epoch seconds or null"),
    ({"start": NOW + 100, "end": NOW + 50}, "'end' must come after 'start'"),
    ({"end": NOW - 1}, "the window ends in the past: every target would expire at once"),
    ({"start": NOW - 2 * 86400}, "the window ends in the past"),  # + 24 h by default
    ({"sequence": "Install; rm"}, "'sequence' must be a sequence name such as 'install'"),
    ({"window": 7200}, "unknown field 'window' (known: package, targets, start, end, "
                       "max_per_relay, retries, sequence)"),
])
def test_bad_deployment_bodies_are_400_and_reach_no_coordinator(http, deployments, change,
                                                                 message):
    body = {"package": "firefox", "targets": ["ws-01"], **change}
    r = post_json(http, "/api/v1/deployments", body)
    assert r.code == 400 and r.json["error"] == "bad-request"
    assert r.json["message"].startswith(message)
    assert deployments.calls == []


@pytest.mark.parametrize("raw", [b"{", b'{"package": NaN}', b"null", b"\"firefox\"",
                                 b'{"package": "firefox", "targets": ["ws-01"]' + b"]" * 10])
def test_deployment_body_that_is_not_a_json_object_is_400(http, deployments, raw):
    r = post_json(http, "/api/v1/deployments", raw)
    assert r.code == 400 and deployments.calls == []


def test_a_100_kb_body_is_413_before_anything(http, deployments, store, events):
    body = json.dumps({"package": "firefox", "targets": ["ws-%05d" % i for i in range(10000)]})
    assert len(body) > 100_000
    for target in ("/api/v1/deployments", "/api/v1/packages"):
        r = post_json(http, target, body.encode())
        assert r.code == 413 and r.json["error"] == "body-too-large"
    assert deployments.calls == [] and store.list() == []


def test_a_body_just_under_the_limit_is_read(http, firefox, deployments):
    names = ["ws-%05d" % i for i in range(5000)]
    body = json.dumps({"package": "firefox", "targets": names}).encode()
    body += b" " * (api.MAX_BODY_BYTES - len(body))  # exactly the limit
    assert post_json(http, "/api/v1/deployments", body).code == 201
    assert deployments.calls[0][2] == names


def test_a_refusal_of_the_coordinator_is_400_with_its_message(http, firefox, deployments):
    r = post_json(http, "/api/v1/deployments", {"package": "firefox", "targets": ["ghost"]})
    assert r.code == 400
    assert r.json == {"error": "refused", "message": "no machine named 'ghost'"}


def test_deploying_an_unknown_package_is_404_before_the_coordinator(http, deployments):
    r = post_json(http, "/api/v1/deployments", {"package": "chrome", "targets": ["ws-01"]})
    assert r.code == 404 and r.json == {"error": "not-found", "message": "no package 'chrome'"}
    assert deployments.calls == []


def test_list_and_show_deployments(http, deployments):
    listed = http.get("/api/v1/deployments").json["deployments"]
    assert [d["id"] for d in listed] == [DEP]
    assert listed[0]["states"] == {scheduler.SUCCESS: 1, scheduler.STARTED: 1,
                                   scheduler.PENDING: 1, scheduler.EXECUTION_ERROR: 1}
    shown = http.get(f"/api/v1/deployments/{DEP}/").json
    assert [t["hostname"] for t in shown["targets"]] == ["ws-01", "ws-02", "dup", "dup"]


def test_an_unknown_deployment_is_404_everywhere(http, deployments):
    for method, suffix in (("GET", ""), ("POST", "/stop"), ("POST", "/restart"),
                           ("GET", "/machines/ws-01/audit")):
        r = http.request(method, "/api/v1/deployments/dep-nope" + suffix,
                         headers=["Content-Length: 0"])
        assert r.code == 404
        assert r.json == {"error": "not-found", "message": "no deployment 'dep-nope'"}
    assert http.get("/api/v1/deployments/%1b%5b2J").code == 404


def test_stop_and_restart(http, deployments, events):
    r = http.post(f"/api/v1/deployments/{DEP}/stop")
    assert r.code == 200 and r.json == {"id": DEP, "stopped": True}
    r = http.post(f"/api/v1/deployments/{DEP}/restart")
    assert r.code == 200 and r.json == {"id": DEP, "restarted": 2}
    assert deployments.calls == [("stop", DEP), ("restart", DEP)]
    assert info_lines(events) == [
        f"API: 127.0.0.1:40000 stopped deployment {DEP}",
        f"API: 127.0.0.1:40000 restarted deployment {DEP}: 2 machines start over"]


@pytest.mark.parametrize("name", ["ws-02", "m-2"])
def test_audit_of_a_machine_by_hostname_or_uuid(http, deployments, name):
    r = http.get(f"/api/v1/deployments/{DEP}/machines/{name}/audit")
    assert r.code == 200
    assert r.json["uuid"] == "m-2" and r.json["hostname"] == "ws-02"
    assert r.json["state"] == scheduler.STARTED
    assert [line["label"] for line in r.json["audit"]] == [scheduler.PENDING, "run"]
    assert b"\x1b" not in r.raw_body  # what the machine sent leaves as a JSON escape
    assert r.json["audit"][1]["output"].startswith("\x1b[2J")


def test_audit_of_a_machine_not_in_the_deployment_is_404(http, deployments):
    r = http.get(f"/api/v1/deployments/{DEP}/machines/ws-99/audit")
    assert r.code == 404
    assert r.json["message"] == f"no machine 'ws-99' in deployment {DEP}"
    assert not [c for c in deployments.calls if c[0] == "audit"]


def test_audit_of_an_ambiguous_hostname_is_409_with_candidates(http, deployments):
    r = http.get(f"/api/v1/deployments/{DEP}/machines/dup/audit")
    assert r.code == 409 and r.json["error"] == "ambiguous" and r.json["count"] == 2
    assert r.json["candidates"] == [{"uuid": "m-3", "hostname": "dup"},
                                    {"uuid": "m-4", "hostname": "dup"}]
    assert http.get(f"/api/v1/deployments/{DEP}/machines/m-4/audit").code == 200


ROUTES = [("GET", "/api/v1/packages"), ("POST", "/api/v1/packages"),
          ("GET", "/api/v1/packages/firefox"), ("DELETE", "/api/v1/packages/firefox"),
          ("GET", "/api/v1/deployments"), ("POST", "/api/v1/deployments"),
          ("GET", f"/api/v1/deployments/{DEP}"), ("POST", f"/api/v1/deployments/{DEP}/stop"),
          ("POST", f"/api/v1/deployments/{DEP}/restart"),
          ("GET", f"/api/v1/deployments/{DEP}/machines/ws-02/audit")]


@pytest.mark.parametrize("method,target", ROUTES)
@pytest.mark.parametrize("token", [None, "wrong-secret-value"])
def test_every_route_needs_the_token(http, firefox, deployments, store, events, method,
                                     target, token):
    body = json.dumps({"package": "firefox", "targets": ["ws-01"], "path": "/srv"}).encode()
    r = http.post(target, body=body, method=method, token=token)
    assert r.code == 401 and r.json["error"] == "unauthorized"
    assert deployments.calls == [] and store.list() == ["firefox"]
    refusals = [formatEvent(e) for e in events
                if e.get("log_format", "").startswith("API refused")]
    assert refusals == [f"API refused {method} {target} from 127.0.0.1:40000: 401 "
                        + ("no bearer token" if token is None else "wrong token")]


@pytest.mark.parametrize("method,target", ROUTES)
def test_without_the_collaborators_these_routes_do_not_exist(method, target):
    harness = Harness(FakeRegistry())
    r = harness.request(method, target, headers=["Content-Length: 0"])
    assert r.code == 404 and r.json == {"error": "not-found", "message": "no such endpoint"}
    harness.close()


def test_a_failing_coordinator_is_500_and_logged(http, deployments, events):
    deployments.summary = lambda: defer.fail(RuntimeError("database is locked"))
    r = http.get("/api/v1/deployments")
    assert r.code == 500 and b"locked" not in r.raw_body
    assert len([e for e in events if "log_failure" in e]) == 1


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["packages", "deployments"]),
       st.lists(st.text(max_size=20), max_size=4),
       st.sampled_from(["GET", "POST", "DELETE"]), st.binary(max_size=200))
def test_any_request_below_these_routes_gets_json_never_a_500(tmp_path_factory, top, segments,
                                                               method, body):
    store = PackageStore(str(tmp_path_factory.mktemp("store")))
    harness = Harness(FakeRegistry(), deployments=FakeDeployments(), packages=store,
                      run_in_thread=inline)
    target = "/api/v1/" + "/".join([top] + [urllib.parse.quote(s, safe="") for s in segments])
    r = harness.post(target, body=body, method=method)
    assert r.code in (200, 201, 400, 404, 405, 409)
    assert isinstance(r.json, dict)
    harness.close()
