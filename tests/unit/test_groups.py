"""Saved groups: the API's /groups routes over the real store (SQLite, inline), names
resolved like the other machine commands, and `group:NAME` targets in a deployment."""

import json

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from medulla_appliance.core.store import Store
from medulla_appliance.master import storage
from medulla_appliance.master.api_groups import GroupRoutes
from medulla_appliance.master.deployments import DeploymentError, Groups
from tests.unit import test_deployments
from tests.unit.api_harness import NOW, FakeRegistry, Harness, machine

MACHINES = [machine("pc-a", "u-a"), machine("pc-b", "u-b", online=False),
            machine("twin", "u-t1"), machine("twin", "u-t2")]

coordinator = test_deployments.coordinator
run = test_deployments.run


@pytest.fixture
def store(tmp_path):
    store = Store("sqlite:" + str(tmp_path / "m.sqlite"), storage.MIGRATIONS, threaded=False)
    for m in MACHINES:
        store.run(lambda c, m=m: c.execute(
            "INSERT INTO machines (uuid, hostname, jid, relay, online, enrolled_at, updated_at) "
            "VALUES (?, ?, ?, 'master', ?, 0, 0)",
            (m["uuid"], m["hostname"], m["jid"].split("/")[0], int(m["online"]))))
    return store


@pytest.fixture
def http(store):
    registry = FakeRegistry(MACHINES)
    harness = Harness(registry)
    harness.site.resource._route_groups.append(
        GroupRoutes(registry, Groups(store, harness.clock)))
    yield harness
    harness.close()


@pytest.fixture
def events():
    captured = []
    globalLogPublisher.addObserver(captured.append)
    yield captured
    globalLogPublisher.removeObserver(captured.append)


def post(http, target, body):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(target, body=data, headers=["Content-Type: application/json"])


def test_create_list_show_and_delete_a_group(http, events):
    r = post(http, "/api/v1/groups", {"name": "lab", "machines": ["pc-a", "u-b"]})
    assert r.code == 201 and r.header("location") == "/api/v1/groups/lab"
    assert [(m["hostname"], m["online"]) for m in r.json["machines"]] == [
        ("pc-a", True), ("pc-b", False)]
    assert http.get("/api/v1/groups").json["groups"] == [
        {"name": "lab", "machines": 2, "online": 1, "created_at": NOW, "updated_at": NOW}]
    shown = http.get("/api/v1/groups/lab").json
    assert [m["uuid"] for m in shown["machines"]] == ["u-a", "u-b"]
    assert http.request("DELETE", "/api/v1/groups/lab").json == {"name": "lab",
                                                                  "deleted": True}
    assert http.get("/api/v1/groups").json == {"groups": []}
    assert http.get("/api/v1/groups/lab").code == 404
    lines = [formatEvent(e) for e in events if e.get("log_format", "").startswith("API: ")]
    assert any("created group lab with 2 machines" in x for x in lines)
    assert any("deleted group lab" in x for x in lines)


def test_a_group_may_be_created_empty_and_filled_later(http):
    assert post(http, "/api/v1/groups", {"name": "later"}).json["machines"] == []
    r = post(http, "/api/v1/groups/later/add", {"machines": ["pc-a", "pc-a", "pc-b"]})
    assert r.json == {"name": "later", "added": 2, "size": 2}
    # adding a member again adds nothing; removing one that is not in it removes nothing
    assert post(http, "/api/v1/groups/later/add", {"machines": ["pc-a"]}).json["added"] == 0
    r = post(http, "/api/v1/groups/later/remove", {"machines": ["pc-a", "u-t1"]})
    assert r.json == {"name": "later", "removed": 1, "size": 1}
    r = post(http, "/api/v1/groups/later/remove", {"machines": ["pc-b"]})
    assert r.json["size"] == 0
    assert http.get("/api/v1/groups").json["groups"][0]["machines"] == 0  # empty, still there


def test_an_existing_group_is_409_unless_replace(http):
    post(http, "/api/v1/groups", {"name": "lab", "machines": ["pc-a"]})
    r = post(http, "/api/v1/groups", {"name": "lab", "machines": ["pc-b"]})
    assert r.code == 409 and r.json["error"] == "exists"
    assert [m["uuid"] for m in http.get("/api/v1/groups/lab").json["machines"]] == ["u-a"]
    r = post(http, "/api/v1/groups", {"name": "lab", "machines": ["pc-b"], "replace": True})
    assert r.code == 200
    assert [m["uuid"] for m in r.json["machines"]] == ["u-b"]


def test_an_ambiguous_name_is_409_with_candidates_and_changes_nothing(http):
    r = post(http, "/api/v1/groups", {"name": "lab", "machines": ["pc-a", "twin"]})
    assert r.code == 409 and r.json["error"] == "ambiguous"
    assert sorted(c["uuid"] for c in r.json["candidates"]) == ["u-t1", "u-t2"]
    assert http.get("/api/v1/groups").json == {"groups": []}
    post(http, "/api/v1/groups", {"name": "lab", "machines": ["pc-a"]})
    r = post(http, "/api/v1/groups/lab/add", {"machines": ["pc-b", "twin"]})
    assert r.code == 409
    assert len(http.get("/api/v1/groups/lab").json["machines"]) == 1
    # a uuid says which twin
    assert post(http, "/api/v1/groups/lab/add", {"machines": ["u-t2"]}).json["size"] == 2


def test_unknown_machines_are_404_naming_them_and_change_nothing(http):
    r = post(http, "/api/v1/groups", {"name": "lab", "machines": ["pc-a", "ghost", "nobody"]})
    assert r.code == 404 and r.json["unknown"] == ["ghost", "nobody"]
    assert "'ghost', 'nobody'" in r.json["message"]
    assert http.get("/api/v1/groups").json == {"groups": []}


def test_changing_or_deleting_an_unknown_group_is_404(http):
    assert post(http, "/api/v1/groups/nope/add", {"machines": ["pc-a"]}).code == 404
    assert post(http, "/api/v1/groups/nope/remove", {"machines": ["pc-a"]}).code == 404
    assert http.request("DELETE", "/api/v1/groups/nope").code == 404
    assert http.get("/api/v1/groups/..%2Fetc").code == 404  # not a group name at all


@pytest.mark.parametrize("body, message", [
    ({"machines": ["pc-a"]}, "'name'"),                                  # no name
    ({"name": "../x", "machines": []}, "'name' must be"),                 # hostile name
    ({"name": "a" * 129}, "'name' must be"),                              # too long
    ({"name": "lab", "machines": "pc-a"}, "'machines' must be a list"),   # not a list
    ({"name": "lab", "machines": [""]}, "'machines'"),                    # empty name
    ({"name": "lab", "machines": [3]}, "'machines'"),                     # not text
    ({"name": "lab", "replace": "yes"}, "'replace' must be true or false"),
    ({"name": "lab", "colour": "red"}, "unknown field 'colour'"),
    (b"[1, 2]", "JSON object"),
    (b"\xff\xfe", "not UTF-8 JSON"),
])
def test_bad_group_bodies_are_400_and_create_nothing(http, body, message):
    r = post(http, "/api/v1/groups", body)
    assert r.code == 400 and message in r.json["message"], r.json
    assert http.get("/api/v1/groups").json == {"groups": []}


def test_add_needs_at_least_one_machine(http):
    post(http, "/api/v1/groups", {"name": "lab"})
    r = post(http, "/api/v1/groups/lab/add", {"machines": []})
    assert r.code == 400 and "1 to" in r.json["message"]


@pytest.mark.parametrize("method, target, allow", [
    ("PUT", "/api/v1/groups", "GET, HEAD, POST"),
    ("POST", "/api/v1/groups/lab", "GET, HEAD, DELETE"),
    ("GET", "/api/v1/groups/lab/add", "POST"),
])
def test_each_group_route_answers_405_with_its_methods(http, method, target, allow):
    r = http.post(target, method=method)
    assert r.code == 405 and r.header("allow") == allow


def test_group_routes_need_the_token(http):
    assert http.get("/api/v1/groups", token="wrong").code == 401
    r = http.post("/api/v1/groups", body=b'{"name": "lab"}', token=None)
    assert r.code == 401
    assert http.get("/api/v1/groups").json == {"groups": []}


# -- deploying to a group -----------------------------------------------------------------

def test_a_deployment_to_a_group_targets_its_machines(coordinator):
    c = coordinator
    groups = Groups(c.store, c.clock)
    assert run(groups.create("both", ["m-a", "m-b"])) == "created"
    dep = run(c.deps.create("pkg", ["group:both", "pc-a"]))
    assert dep["target_count"] == 2


def test_a_deployment_to_an_unknown_or_empty_group_is_refused_saying_which(coordinator):
    c = coordinator
    with pytest.raises(DeploymentError, match="no group named 'ghost'"):
        run(c.deps.create("pkg", ["group:ghost"]))
    run(Groups(c.store, c.clock).create("empty", []))
    with pytest.raises(DeploymentError, match="group 'empty' has no machine"):
        run(c.deps.create("pkg", ["pc-a", "group:empty"]))
    assert run(c.deps.summary()) == []  # nothing half-created


def test_groups_saved_before_migration_6_are_kept(tmp_path):
    path = "sqlite:" + str(tmp_path / "old.sqlite")
    old = Store(path, [m for m in storage.MIGRATIONS if m.version <= 2], threaded=False)
    old.run(lambda c: c.execute("INSERT INTO machines (uuid, hostname, jid, enrolled_at, "
                                "updated_at) VALUES ('u-a', 'pc-a', 'pc-a@d', 0, 0)"))
    old.run(lambda c: c.execute("INSERT INTO machine_groups VALUES ('lab', 'u-a')"))
    old.close()
    new = Store(path, storage.MIGRATIONS, threaded=False)
    assert [(g["name"], g["machines"]) for g in run(Groups(new, None).list())] == [("lab", 1)]


def test_group_tables_escape_what_machines_sent():
    from medulla_appliance.ctl.group_commands import render_group, render_groups
    listed = render_groups([{"name": "lab", "machines": 2, "online": 1,
                             "updated_at": NOW - 120}], NOW)
    assert listed.splitlines()[0].split() == ["GROUP", "MACHINES", "ONLINE", "UPDATED"]
    assert listed.splitlines()[1].split()[:3] == ["lab", "2", "1"]
    assert listed.endswith("1 group")
    shown = render_group({"name": "lab", "machines": [
        {"hostname": "evil\x1b[2Jhost", "online": False, "relay": "master", "uuid": "u-a"}]})
    assert "\x1b" not in shown and "offline" in shown and shown.startswith("group lab: 1 machine")
    assert render_group({"name": "empty", "machines": []}) == "group empty: 0 machines"
