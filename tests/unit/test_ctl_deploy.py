"""medullactl package / deploy / audit: pure rendering, then the commands against the
in-thread fake API of test_ctl."""

import datetime
import io
import json

import pytest

from medulla_appliance.ctl import render_deploy as rd
from medulla_appliance.ctl.__main__ import run
from medulla_appliance.master.logic import scheduler
from tests.unit import test_ctl
from tests.unit.test_ctl import TOKEN

UTC = datetime.timezone.utc
NOW = 1763892060.0  # 2025-11-23 10:01:00 UTC
DEP = "dep-0123456789abcdef"

api = test_ctl.api
token_file = test_ctl.token_file
ctl = test_ctl.ctl


def target(hostname, state, attempts=1, updated_at=NOW - 5, **extra):
    return {"uuid": f"m-{hostname}", "hostname": hostname, "relay": "master", "state": state,
            "attempts": attempts, "session": "", "step": "run", "detail": "",
            "updated_at": updated_at, **extra}


def deployment(targets, **extra):
    dep = {"id": DEP, "package_id": "firefox", "package_name": "Firefox ESR",
           "package_version": "128.0", "sequence": "install", "start_at": NOW - 60,
           "end_at": NOW + 86400, "max_per_relay": 10, "retries": 1, "created_at": NOW - 60,
           "stopped": 0, "targets": targets}
    dep.update(extra)
    return dep


def tally(**counts):
    return rd.Tally(**counts)


# -- pure: progress --------------------------------------------------------------------

@pytest.mark.parametrize("counts,line", [
    (dict(total=20, done=12, running=3, failed=1),
     "[######----] 12/20 done, 3 running, 1 failed"),
    (dict(total=20, done=19, running=1, failed=0),
     "[#########-] 19/20 done, 1 running, 0 failed"),  # full only when all are done
    (dict(total=3, done=3, running=0, failed=3), "[##########] 3/3 done, 0 running, 3 failed"),
    (dict(total=7, done=0, running=0, failed=0), "[----------] 0/7 done, 0 running, 0 failed"),
    (dict(total=0), "[##########] 0/0 done, 0 running, 0 failed"),
])
def test_progress_bar(counts, line):
    assert rd.render_progress(tally(**counts)) == line


def test_progress_bar_width():
    assert rd.render_progress(tally(total=4, done=1), width=20).startswith(
        "[#####---------------] 1/4")


def test_tally_counts_final_states_as_done_and_failures_apart():
    dep = deployment([target("a", scheduler.SUCCESS), target("b", scheduler.EXECUTION_ERROR),
                      target("c", scheduler.STARTED), target("d", scheduler.PENDING),
                      target("e", scheduler.MISSING_AGENT), target("f", scheduler.EXPIRED)])
    t = rd.tally_targets(dep, NOW)
    assert (t.total, t.done, t.running, t.failed, t.succeeded, t.waiting) == (6, 4, 1, 3, 1, 1)
    assert not t.settled


@pytest.mark.parametrize("change,settled", [
    ({}, False),                                   # one retry left, window open
    ({"retries": 0}, True),                        # no retry left
    ({"stopped": 1}, True),                        # stopped: the failure stands
    ({"end_at": NOW - 1}, True),                   # window over
])
def test_a_transfer_failure_that_will_be_retried_is_not_done(change, settled):
    dep = deployment([target("a", scheduler.SUCCESS),
                      target("b", scheduler.TRANSFER_FAILED, attempts=1)], **change)
    assert rd.tally_targets(dep, NOW).settled is settled


def test_tally_of_summary_states():
    t = rd.tally_states({scheduler.SUCCESS: 5, scheduler.HASH_INVALID: 1,
                         scheduler.STARTED: 2, scheduler.WAITING_ONLINE: 4})
    assert (t.total, t.done, t.running, t.failed, t.waiting) == (12, 6, 2, 1, 4)


# -- pure: times, sizes ----------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("1763892060", NOW), ("1763892060.5", NOW + 0.5), ("2025-11-23T10:01", NOW),
    ("2025-11-23 10:01:00", NOW), ("2025-11-23T11:01+01:00", NOW),
    ("2025-11-23T10:01:00Z", NOW), ("2025-11-23", NOW - 10 * 3600 - 60)])
def test_parse_time_iso_local_or_epoch(text, expected):
    assert rd.parse_time(text, UTC) == expected


def test_parse_time_naive_is_local_time():
    local = datetime.datetime(2025, 11, 23, 20, 0).timestamp()  # the system's zone
    assert rd.parse_time("2025-11-23T20:00") == local


@pytest.mark.parametrize("text", ["tomorrow", "23/11/2025", "", "-5", "2025-13-01"])
def test_parse_time_refuses_what_it_cannot_read(text):
    with pytest.raises(ValueError, match="expected ISO 8601 local time"):
        rd.parse_time(text, UTC)


@pytest.mark.parametrize("text,seconds", [("2h", 7200), ("90m", 5400), ("1d", 86400),
                                          ("45s", 45), ("600", 600)])
def test_parse_window(text, seconds):
    assert rd.parse_window(text) == seconds


@pytest.mark.parametrize("text", ["2 hours", "0", "-1h", "h"])
def test_parse_window_refuses(text):
    with pytest.raises(ValueError, match="invalid window: expected a duration"):
        rd.parse_window(text)


@pytest.mark.parametrize("size,text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                       (12 * 1024 ** 2, "12.0 MiB"),
                                       (3 * 1024 ** 4, "3072.0 GiB"), (None, "-")])
def test_format_size(size, text):
    assert rd.format_size(size) == text


# -- pure: tables ----------------------------------------------------------------------

def test_package_list_table():
    out = rd.render_packages([
        {"id": "vlc", "name": "VLC", "version": "3.0", "os": ["linux", "windows"], "files": 2,
         "size": 40 * 1024 ** 2},
        {"id": "broken", "error": "package 'broken': bad descriptor: schema: expected 1"},
        {"id": "firefox", "name": "Firefox ESR", "version": "128.0", "os": ["linux"],
         "files": 1, "size": 512}])
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "VERSION", "OS", "FILES", "SIZE"]
    assert [line.split()[0] for line in lines[1:4]] == ["broken", "firefox", "vlc"]
    assert "(unusable: package 'broken': bad descriptor" in lines[1]
    assert lines[3].split()[-4:] == ["windows", "2", "40.0", "MiB"]
    assert lines[-1] == "3 packages"
    assert rd.render_packages([]) == "0 packages"


def test_package_show_lists_files_and_steps_escaped():
    out = rd.render_package({
        "schema": 1, "id": "firefox", "name": "Firefox\x1b[2J", "version": "128.0",
        "os": ["linux"], "description": "line one\nline two",
        "files": [{"path": "install.sh", "sha256": "ab" * 32, "size": 10}],
        "sequences": {"linux": {"install": [
            {"type": "script", "label": "run", "on_error": "END_ERROR", "body": "x"},
            {"type": "end_success", "label": "done"}]}}})
    assert "\x1b" not in out and "name:        Firefox\\x1b[2J" in out
    assert "description: line one\\x0aline two" in out
    lines = out.splitlines()
    assert lines[lines.index("FILES") + 2].split() == ["install.sh", "10", "B", "ab" * 32]
    at = lines.index("SEQUENCES")
    assert lines[at + 1].split() == ["SEQUENCE", "#", "LABEL", "TYPE", "ON", "ERROR"]
    assert lines[at + 2].split() == ["linux/install", "1", "run", "script", "END_ERROR"]
    assert lines[at + 3].split() == ["linux/install", "2", "done", "end_success", "-"]


def test_deployment_list_counts_targets_by_outcome():
    deps = [{"id": DEP, "package_id": "firefox", "created_at": NOW - 60, "start_at": NOW - 60,
             "stopped": 0, "states": {scheduler.SUCCESS: 12, scheduler.EXECUTION_ERROR: 1,
                                      scheduler.STARTED: 3, scheduler.PENDING: 4}},
            {"id": "dep-2", "package_id": "vlc", "created_at": NOW - 7200, "start_at": NOW + 60,
             "stopped": 0, "states": {scheduler.PENDING: 2}},
            {"id": "dep-3", "package_id": "vlc", "created_at": NOW - 9000, "stopped": 1,
             "states": {scheduler.STOPPED: 2}}]
    lines = rd.render_deployments(deps, NOW, UTC).splitlines()
    assert lines[0].split() == ["ID", "PACKAGE", "CREATED", "STATUS", "TARGETS", "SUCCESS",
                                "FAILED", "RUNNING", "WAITING"]
    assert lines[1].split() == [DEP, "firefox", "2025-11-23", "10:00", "running", "20", "12",
                                "1", "3", "4"]
    assert lines[2].split()[4:] == ["scheduled", "2", "0", "0", "0", "2"]
    assert lines[3].split()[4:] == ["done", "2", "0", "2", "0", "0"]
    assert lines[-1] == "3 deployments"


def test_deployment_details_table_escapes_hostnames():
    dep = deployment([target("ws-01", scheduler.SUCCESS, updated_at=NOW - 180),
                      target("\x1b]0;pwn\x07", scheduler.STARTED, step="copy\x1b[2J")])
    out = rd.render_deployment(dep, NOW, UTC)
    assert "\x1b" not in out and "\x07" not in out
    lines = out.splitlines()
    assert lines[0] == f"deployment: {DEP}"
    assert "package:    firefox (Firefox ESR 128.0), sequence install" in lines
    assert "window:     2025-11-23 10:00 to 2025-11-24 10:01" in lines
    assert "limits:     10 at once per relay, 1 retry" in lines
    assert "status:     running" in lines
    header = lines.index("") + 1
    assert lines[header].split() == ["HOSTNAME", "STATE", "STEP", "ATTEMPTS", "UPDATED"]
    assert lines[header + 1].split() == ["ws-01", "DEPLOYMENT", "SUCCESS", "run", "1", "3m",
                                         "ago"]
    assert lines[header + 2].startswith("\\x1b]0;pwn\\x07  DEPLOYMENT START")
    assert lines[-1] == "[#####-----] 1/2 done, 1 running, 0 failed"


def test_machine_audit_indents_escaped_output():
    out = rd.render_audit({
        "deployment": DEP, "uuid": "m-2", "hostname": "ws-02",
        "state": scheduler.EXECUTION_ERROR, "audit": [
            {"ts": NOW - 10, "session": "", "kind": "state", "label": scheduler.PENDING,
             "ok": None, "ret": None, "output": ""},
            {"ts": NOW - 5, "session": "s", "kind": "step", "label": "unpack", "ok": 1,
             "ret": 0, "output": "done\r\n"},
            {"ts": NOW - 4, "session": "s", "kind": "step", "label": "run", "ok": 0, "ret": 2,
             "output": "\x1b[2Jclear\n\tdisk full\x9b\n"},
            {"ts": NOW - 3, "session": "s", "kind": "state",
             "label": scheduler.EXECUTION_ERROR, "ok": None, "ret": None,
             "output": "exit 2"}]}, UTC)
    assert out.splitlines() == [
        f"ws-02 (m-2) in {DEP}: ABORT PACKAGE EXECUTION ERROR",
        "",
        "2025-11-23 10:00:50  state  DEPLOYMENT PENDING",
        "2025-11-23 10:00:55  step   unpack  ok  ret=0",
        "    done",
        "2025-11-23 10:00:56  step   run  FAILED  ret=2",
        "    \\x1b[2Jclear",
        "            disk full\\x9b",
        "2025-11-23 10:00:57  state  ABORT PACKAGE EXECUTION ERROR",
        "    exit 2"]


def test_machine_audit_with_nothing_recorded():
    assert rd.render_audit({"deployment": DEP, "uuid": "m", "hostname": "h",
                            "state": scheduler.PENDING, "audit": []}).endswith(
        "(nothing recorded yet)")


def test_package_added_lists_the_import_warnings_escaped():
    out = rd.render_package_added({"id": "p", "name": "P", "version": "1", "files": 1,
                                   "size": 10, "warnings": ["info.limit_rate_ko ignored",
                                                            "odd\x1b[2J"]}, replaced=True)
    assert out.splitlines() == ["package p (P 1) replaced: 1 file, 10 B",
                                "warning: info.limit_rate_ko ignored",
                                "warning: odd\\x1b[2J",
                                "deploy it with: medullactl deploy p TARGET..."]


def test_created_without_a_start_starts_now():
    assert "from now to 2025-11-23 12:01" in rd.render_created(
        {"id": DEP, "package_id": "firefox", "start_at": None, "end_at": NOW + 7200}, UTC)


def test_created_says_how_to_follow():
    out = rd.render_created({"id": DEP, "package_id": "firefox", "start_at": NOW,
                             "end_at": NOW + 7200, "target_count": 2}, UTC)
    assert out.splitlines() == [
        f"deployment {DEP} created: package firefox to 2 machines, from 2025-11-23 10:01 "
        "to 2025-11-23 12:01",
        f"follow it with: medullactl audit {DEP} --follow"]


# -- the commands against the fake API -------------------------------------------------

PACKAGE = {"id": "firefox", "name": "Firefox ESR", "version": "128.0", "os": ["linux"],
           "files": 2, "size": 1536}
DESCRIPTOR = {"schema": 1, "id": "firefox", "name": "Firefox ESR", "version": "128.0",
              "os": ["linux"], "files": [{"path": "install.sh", "sha256": "0" * 64, "size": 9}],
              "sequences": {"linux": {"install": [{"type": "script", "label": "run"}]}}}
CREATED = {"id": DEP, "package_id": "firefox", "start_at": NOW, "end_at": NOW + 86400,
           "target_count": 2}


@pytest.fixture
def routes(api):
    api.routes.update({
        "/api/v1/packages": (200, {"packages": [PACKAGE]}),
        "/api/v1/packages/firefox": (200, DESCRIPTOR),
        "/api/v1/packages/chrome": (404, {"error": "not-found",
                                          "message": "no package 'chrome'"}),
        "/api/v1/deployments": (200, {"deployments": [
            {**{k: v for k, v in deployment([]).items() if k != "targets"},
             "states": {scheduler.SUCCESS: 1, scheduler.STARTED: 1}}]}),
        f"/api/v1/deployments/{DEP}": (200, deployment([
            target("ws-01", scheduler.SUCCESS), target("ws-02", scheduler.STARTED)])),
        "/api/v1/deployments/dep-nope": (404, {"error": "not-found",
                                               "message": "no deployment 'dep-nope'"}),
        f"/api/v1/deployments/{DEP}/machines/ws-02/audit": (200, {
            "deployment": DEP, "uuid": "m-2", "hostname": "ws-02", "state": scheduler.STARTED,
            "audit": [{"ts": NOW, "session": "s", "kind": "step", "label": "run", "ok": 0,
                       "ret": 1, "output": "\x1b[31mboom"}]}),
    })
    api.post_routes.update({
        "/api/v1/packages": (201, PACKAGE),
        "/api/v1/deployments": (201, CREATED),
        f"/api/v1/deployments/{DEP}/stop": (200, {"id": DEP, "stopped": True}),
        f"/api/v1/deployments/{DEP}/restart": (200, {"id": DEP, "restarted": 3}),
    })
    api.delete_routes.update({
        "/api/v1/packages/firefox": (200, {"id": "firefox", "removed": True}),
        "/api/v1/packages/vlc": (409, {"error": "in-use", "deployments": [DEP], "message":
                                       f"package 'vlc' is used by active deployment {DEP}; "
                                       "stop it first"}),
    })
    return api


def posted_json(api):
    return [(path, json.loads(body) if body else None) for path, _, body in api.posted]


def test_package_add_posts_the_absolute_path(ctl, routes, tmp_path, monkeypatch):
    (tmp_path / "firefox").mkdir()
    monkeypatch.chdir(tmp_path)
    code, out, err = ctl("package", "add", "firefox")
    assert (code, err) == (0, "")
    assert posted_json(routes) == [("/api/v1/packages", {
        "path": str(tmp_path / "firefox"), "replace": False, "format": "native"})]
    assert out.splitlines() == ["package firefox (Firefox ESR 128.0) added: 2 files, 1.5 KiB",
                                "deploy it with: medullactl deploy firefox TARGET..."]


def test_package_import_is_the_medulla_format(ctl, routes, tmp_path):
    code, out, _ = ctl("package", "import", str(tmp_path), "--replace", "--json")
    assert code == 0 and json.loads(out) == PACKAGE
    assert posted_json(routes) == [("/api/v1/packages", {
        "path": str(tmp_path), "replace": True, "format": "medulla"})]


def test_package_add_of_a_missing_folder_asks_nothing(ctl, routes, tmp_path):
    code, out, err = ctl("package", "add", str(tmp_path / "nope"))
    assert (code, out) == (1, "")
    assert err == f"medullactl: no folder {tmp_path / 'nope'}\n"
    assert routes.posted == []


def test_package_add_of_an_existing_package_suggests_replace(ctl, routes, tmp_path):
    routes.post_routes["/api/v1/packages"] = (409, {
        "error": "exists", "message": "package 'firefox' already exists "
                                      "(\"replace\": true replaces it)"})
    code, _, err = ctl("package", "add", str(tmp_path))
    assert code == 1
    assert err == "medullactl: package 'firefox' already exists: add --replace to replace it\n"


def test_package_add_refused_by_the_master_shows_its_reason(ctl, routes, tmp_path):
    message = (f"no folder {tmp_path} on the master — medulla-master cannot see anything "
               "under /tmp (its unit has ProtectHome=yes and PrivateTmp=yes): copy the "
               "package folder elsewhere, e.g. under /srv")
    routes.post_routes["/api/v1/packages"] = (400, {"error": "bad-request", "message": message})
    assert ctl("package", "add", str(tmp_path)) == (1, "", f"medullactl: {message}\n")


def test_package_list_show_and_json(ctl, routes):
    code, out, _ = ctl("package", "list")
    assert code == 0 and out.splitlines()[-1] == "1 package"
    assert out.splitlines()[1].split() == ["firefox", "Firefox", "ESR", "128.0", "linux", "2",
                                           "1.5", "KiB"]
    assert json.loads(ctl("package", "list", "--json")[1]) == [PACKAGE]
    code, out, _ = ctl("package", "show", "firefox")
    assert code == 0 and out.startswith("id:          firefox\n")
    assert json.loads(ctl("--json", "package", "show", "firefox")[1]) == DESCRIPTOR
    assert ctl("package", "show", "chrome") == (1, "", "medullactl: no package 'chrome'\n")


def test_package_rm(ctl, routes):
    assert ctl("package", "rm", "firefox") == (0, "package firefox removed\n", "")
    code, out, err = ctl("package", "rm", "vlc")
    assert (code, out) == (1, "")
    assert err == f"medullactl: package 'vlc' is used by active deployment {DEP}; stop it first\n"
    assert [p for p, _ in routes.deleted] == ["/api/v1/packages/firefox", "/api/v1/packages/vlc"]
    assert all(auth == f"Bearer {TOKEN}" for _, auth in routes.deleted)


def test_deploy_with_a_window(ctl, routes):
    code, out, err = ctl("deploy", "firefox", "ws-01", "group:accounting",
                         "--start", "1763892060", "--window", "2h",
                         "--max-per-relay", "5", "--retries", "2")
    assert (code, err) == (0, "")
    assert posted_json(routes) == [("/api/v1/deployments", {
        "package": "firefox", "targets": ["ws-01", "group:accounting"], "start": NOW,
        "end": NOW + 7200, "max_per_relay": 5, "retries": 2})]
    lines = out.splitlines()
    assert lines[0].startswith(f"deployment {DEP} created: package firefox to 2 machines")
    assert lines[1] == f"follow it with: medullactl audit {DEP} --follow"


def test_deploy_with_defaults_and_an_iso_end(ctl, routes):
    assert ctl("deploy", "firefox", "ws-01", "--end", "2025-11-23T12:01:00+00:00")[0] == 0
    assert posted_json(routes) == [("/api/v1/deployments", {
        "package": "firefox", "targets": ["ws-01"], "start": None, "end": NOW + 7200})]
    assert json.loads(ctl("deploy", "--json", "firefox", "ws-01")[1]) == CREATED


def test_deploy_window_without_start_counts_from_now(api, routes, token_file):
    out = io.StringIO()
    code = run(["deploy", "firefox", "ws-01", "--window", "90m"], stdout=out,
               stderr=io.StringIO(), env=env_for(api, token_file), now=lambda: NOW)
    assert code == 0
    assert posted_json(routes)[0][1] == {"package": "firefox", "targets": ["ws-01"],
                                         "start": None, "end": NOW + 5400}


@pytest.mark.parametrize("argv,message", [
    (("--start", "tomorrow"), "invalid time 'tomorrow'"),
    (("--window", "2 hours"), "invalid window: expected a duration"),
    (("--end", "1763892060", "--window", "2h"), "not allowed with argument"),
    (("--max-per-relay", "0"), "expected an integer of at least 1"),
    (("--retries", "x"), "expected an integer of at least 0"),
])
def test_deploy_usage_errors_exit_2_and_post_nothing(ctl, routes, argv, message):
    code, out, err = ctl("deploy", "firefox", "ws-01", *argv)
    assert (code, out) == (2, "") and message in err
    assert routes.posted == []


def test_deploy_refused_by_the_master_exits_1_with_its_message(ctl, routes):
    routes.post_routes["/api/v1/deployments"] = (400, {"error": "refused",
                                                       "message": "no machine named 'ghost'"})
    assert ctl("deploy", "firefox", "ghost") == (1, "", "medullactl: no machine named 'ghost'\n")


def test_deploy_of_a_too_long_target_list_suggests_a_group(ctl, routes):
    routes.post_routes["/api/v1/deployments"] = (413, {
        "error": "body-too-large", "message": "the request body is longer than 65536 bytes"})
    code, _, err = ctl("deploy", "firefox", "ws-01")
    assert code == 1 and err.endswith("— name long target lists as a group (group:NAME)\n")


def test_deploy_stop_and_restart(ctl, routes):
    code, out, _ = ctl("deploy", "stop", DEP)
    assert code == 0 and out.startswith(f"deployment {DEP} stopped: ")
    assert f"restart it with: medullactl deploy restart {DEP}" in out
    code, out, _ = ctl("deploy", "restart", DEP)
    assert code == 0 and out == (f"deployment {DEP} restarted: 3 machines start over (those "
                                 "that succeeded or are running keep their state)\n")
    assert [p for p, _, _ in routes.posted] == [f"/api/v1/deployments/{DEP}/stop",
                                                f"/api/v1/deployments/{DEP}/restart"]
    assert json.loads(ctl("--json", "deploy", "stop", DEP)[1]) == {"id": DEP, "stopped": True}
    code, _, err = ctl("deploy", "stop", "dep-nope")
    assert code == 1


def test_deploy_stop_takes_no_window(ctl, routes):
    code, _, err = ctl("deploy", "stop", DEP, "--start", "1763892060")
    assert code == 2 and err == "medullactl: deploy stop takes only a deployment ID\n"
    assert routes.posted == []


def test_a_package_named_stop_deploys_to_several_targets(ctl, routes):
    assert ctl("deploy", "stop", "ws-01", "ws-02")[0] == 0
    assert posted_json(routes)[0][1]["package"] == "stop"


def test_audit_lists_deployments(ctl, routes):
    code, out, _ = ctl("audit")
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith("ID ")
    assert lines[1].split()[0] == DEP and lines[-1] == "1 deployment"
    assert json.loads(ctl("audit", "--json")[1])[0]["id"] == DEP


def test_audit_of_a_deployment_and_of_a_machine(ctl, routes):
    code, out, _ = ctl("audit", DEP)
    assert code == 0
    assert out.splitlines()[-1] == "[#####-----] 1/2 done, 1 running, 0 failed"
    code, out, _ = ctl("audit", DEP, "ws-02")
    assert code == 0 and "\x1b" not in out
    assert out.splitlines()[-1] == "    \\x1b[31mboom"
    assert json.loads(ctl("audit", DEP, "ws-02", "--json")[1])["audit"][0]["ret"] == 1
    assert ctl("audit", "dep-nope") == (1, "", "medullactl: no deployment 'dep-nope'\n")


def test_audit_of_an_ambiguous_hostname_lists_the_uuids(ctl, routes):
    routes.routes[f"/api/v1/deployments/{DEP}/machines/dup/audit"] = (409, {
        "error": "ambiguous", "message": f"2 machines of {DEP} are named 'dup'; use a uuid",
        "candidates": [{"uuid": "m-3", "hostname": "dup"}, {"uuid": "m-4", "hostname": "dup"}]})
    code, out, err = ctl("audit", DEP, "dup")
    assert (code, out) == (1, "")
    assert err.splitlines() == [f"medullactl: 2 machines of {DEP} are named 'dup'; use a uuid",
                                "HOSTNAME  UUID", "dup       m-3", "dup       m-4"]


# -- audit --follow --------------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self):
        return True


def env_for(api, token_file):
    return {"MEDULLA_API_URL": api.url, "MEDULLA_API_TOKEN_FILE": token_file}


def follow(api, token_file, *extra, out=None, sleep=None):
    out = io.StringIO() if out is None else out
    err = io.StringIO()
    naps = []
    code = run(["audit", DEP, "--follow", *extra], env=env_for(api, token_file), stdout=out,
               stderr=err, now=lambda: NOW, sleep=sleep or naps.append)
    return code, out.getvalue(), err.getvalue(), naps


@pytest.fixture
def progressing(routes):
    routes.routes[f"/api/v1/deployments/{DEP}"] = [
        (200, deployment([target("a", scheduler.PENDING), target("b", scheduler.PENDING)])),
        (200, deployment([target("a", scheduler.STARTED), target("b", scheduler.PENDING)])),
        (200, deployment([target("a", scheduler.STARTED), target("b", scheduler.PENDING)])),
        (200, deployment([target("a", scheduler.SUCCESS),
                          target("b", scheduler.TRANSFER_FAILED, attempts=1)])),  # retried
        (200, deployment([target("a", scheduler.SUCCESS),
                          target("b", scheduler.HASH_INVALID, attempts=2)]))]
    return routes


def test_follow_prints_a_line_per_change_when_not_a_terminal(api, progressing, token_file):
    code, out, err, naps = follow(api, token_file)
    assert (code, err) == (0, "")
    assert out.splitlines() == ["[----------] 0/2 done, 0 running, 0 failed",
                                "[----------] 0/2 done, 1 running, 0 failed",
                                "[#####-----] 1/2 done, 0 running, 0 failed",
                                "[##########] 2/2 done, 0 running, 1 failed",
                                f"1 failed: see medullactl audit {DEP}"]
    assert naps == [1.0] * 4


def test_follow_redraws_one_line_on_a_terminal(api, progressing, token_file):
    code, out, _, _ = follow(api, token_file, out=Terminal())
    assert code == 0
    frames = out.split("\n")[0].split("\r")[1:]
    assert len(frames) == 5 and all(f.endswith("\x1b[K") for f in frames)
    assert frames[-1] == "[##########] 2/2 done, 0 running, 1 failed\x1b[K"
    assert out.endswith(f"\n1 failed: see medullactl audit {DEP}\n")


def test_follow_json_prints_only_the_final_details(api, progressing, token_file):
    code, out, _, _ = follow(api, token_file, "--json", out=Terminal())
    assert code == 0
    assert [t["state"] for t in json.loads(out)["targets"]] == [scheduler.SUCCESS,
                                                               scheduler.HASH_INVALID]


def test_ctrl_c_while_following_exits_130_on_a_fresh_line(api, progressing, token_file):
    def interrupted(seconds):
        raise KeyboardInterrupt
    code, out, _, _ = follow(api, token_file, out=Terminal(), sleep=interrupted)
    assert code == 130
    assert out == "\r[----------] 0/2 done, 0 running, 0 failed\x1b[K\n"


def test_follow_ends_at_once_when_already_done(api, routes, token_file):
    routes.routes[f"/api/v1/deployments/{DEP}"] = (200, deployment([
        target("a", scheduler.SUCCESS)]))
    code, out, _, naps = follow(api, token_file)
    assert (code, out, naps) == (0, "[##########] 1/1 done, 0 running, 0 failed\n", [])


def test_master_gone_while_following_is_exit_3_on_its_own_line(api, progressing, token_file):
    def master_stops(seconds):
        api.stop()
    code, out, err, _ = follow(api, token_file, out=Terminal(), sleep=master_stops)
    assert code == 3 and out.endswith("\x1b[K\n")
    assert err.startswith("medullactl: cannot reach the master API")
    api.stop = lambda: None  # the fixture's stop


@pytest.mark.parametrize("argv", [("audit", "--follow"), ("audit", DEP, "ws-01", "--follow")])
def test_follow_needs_a_deployment_and_no_machine(ctl, routes, argv):
    code, _, err = ctl(*argv)
    assert code == 2 and err == "medullactl: --follow needs a deployment ID and no MACHINE\n"
    assert routes.seen == []


def test_help_of_the_new_commands(ctl):
    for argv in (["package", "--help"], ["package", "add", "--help"],
                 ["package", "import", "--help"], ["package", "rm", "--help"],
                 ["deploy", "--help"], ["audit", "--help"]):
        code, out, _ = ctl(*argv)
        assert code == 0 and out.startswith("usage: medullactl")
    assert ctl("package")[0] == 2 and ctl("deploy", "firefox")[0] == 2


def test_hostile_ids_are_quoted_into_one_segment(ctl, routes):
    ctl("audit", "../../machines", "a/b")
    ctl("package", "show", "..")
    assert [p for p, _ in routes.seen] == [
        "/api/v1/deployments/..%2F..%2Fmachines/machines/a%2Fb/audit",
        "/api/v1/packages/%2E%2E"]
