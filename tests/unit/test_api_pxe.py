"""Boot menus through the admin API (a real Site over in-memory transports, real routes,
real PXEMenus over SQLite) and through ``medullactl pxe menu`` (its requests sent to that
same API); and medulla-pxe's configuration errors, which exit 78 with one line."""

import io
import itertools
import json

import pytest
from twisted.internet.task import Clock

from medulla_appliance.core.store import Store
from medulla_appliance.ctl.__main__ import run
from medulla_appliance.ctl.client import ApiClient
from medulla_appliance.master import storage
from medulla_appliance.master.api_pxe import PXERoutes
from medulla_appliance.master.pxe_menus import PXEMenus
from medulla_appliance.master.registry import Registry
from medulla_appliance.pxe.__main__ import main as pxe_main
from tests.unit.api_harness import TOKEN, FakeRegistry, Harness
from tests.unit.deferreds import result_of

MAC = "52:54:00:12:34:56"


@pytest.fixture
def api(tmp_path):
    clock = Clock()
    store = Store("sqlite:" + str(tmp_path / "m.sqlite"), storage.MIGRATIONS, threaded=False)
    counter = itertools.count(1)
    registry = Registry(store, clock, ["00:00:00:00:00:00"],
                        new_uuid=lambda: "m-%d" % next(counter))
    menus = PXEMenus(store, clock, registry)
    harness = Harness(FakeRegistry(), route_groups=(PXERoutes(menus),))
    yield harness, menus
    harness.close()
    store.close()


def call(harness, method, target, body=None):
    raw = json.dumps(body).encode() if body is not None else b""
    if method == "GET":
        return harness.get(target)
    return harness.post(target, raw, method=method)


def test_menus_are_listed_shown_created_and_edited(api):
    harness, _ = api
    listed = call(harness, "GET", "/api/v1/pxe/menus").json["menus"]
    assert [(m["name"], m["assigned"]) for m in listed] == \
        [("default", []), ("registration", ["registration"])]
    created = call(harness, "POST", "/api/v1/pxe/menus",
                   {"name": "lab", "title": "Lab", "timeout": 5})
    assert created.code == 201 and created.header("location") == "/api/v1/pxe/menus/lab"
    added = call(harness, "POST", "/api/v1/pxe/menus/lab/items",
                 {"kind": "master", "title": "Debian 12", "position": 1,
                  "boot": {"kernel": "http://{server}/d12/linux", "initrd": [
                      "http://{server}/d12/initrd.gz"], "args": "auto=true"}})
    assert [i["label"] for i in added.json["items"]] == ["debian-12", "continue"]
    changed = call(harness, "PATCH", "/api/v1/pxe/menus/lab/items/debian-12", {"default": True})
    assert [i["default"] for i in changed.json["items"]] == [True, False]
    refused = call(harness, "DELETE", "/api/v1/pxe/menus/lab/items/continue")
    assert (refused.code, refused.json["error"]) == (409, "last-service")
    bad = call(harness, "PATCH", "/api/v1/pxe/menus/lab", {"title": "a\n:b"})
    assert bad.code == 400 and "control characters" in bad.json["message"]
    assert call(harness, "GET", "/api/v1/pxe/menus/nope").code == 404


def test_assignments_through_the_api(api):
    harness, _ = api
    assigned = call(harness, "PUT", f"/api/v1/pxe/assignments/mac/{MAC.upper()}",
                    {"menu": "default"})
    assert assigned.code == 200 and assigned.json["name"] == "mac:" + MAC
    rows = call(harness, "GET", "/api/v1/pxe/assignments").json["assignments"]
    assert {"kind": "mac", "target": MAC, "menu": "mac:" + MAC} in rows
    assert call(harness, "PUT", "/api/v1/pxe/assignments/registration",
                {"menu": "default"}).code == 200
    assert call(harness, "PUT", "/api/v1/pxe/assignments/wat/x", {"menu": "default"}).code == 404
    gone = call(harness, "DELETE", f"/api/v1/pxe/assignments/mac/{MAC}")
    assert gone.json == {"menu": "mac:" + MAC}
    assert call(harness, "GET", f"/api/v1/pxe/menus/mac:{MAC}").code == 404


# -- medullactl ----------------------------------------------------------------------------

@pytest.fixture
def ctl(api, tmp_path, monkeypatch):
    harness, menus = api

    def through_harness(self, method, path, data=None, *, body=None, timeout=None):
        response = call(harness, method, path, body)
        if response.code >= 400:
            raise self._http_error(response.code, response.raw_body)
        return self._decode(response.raw_body)
    monkeypatch.setattr(ApiClient, "_request", through_harness)
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    env = {"MEDULLA_API_URL": "http://127.0.0.1:7080", "MEDULLA_API_TOKEN_FILE": str(token)}

    def medullactl(*argv):
        out, err = io.StringIO(), io.StringIO()
        code = run(["pxe", "menu", *argv], env=env, stdout=out, stderr=err,
                   now=lambda: 1_763_820_000.0)
        return code, out.getvalue(), err.getvalue()
    return medullactl, menus


def test_a_sysadmin_builds_a_menu_and_gives_it_to_a_machine(ctl):
    medullactl, menus = ctl
    assert medullactl("create", "lab", "--title", "Lab room", "--timeout", "5")[0] == 0
    code, out, err = medullactl("add-item", "lab", "--master", "Windows 11", "--chain",
                                "http://{server}/w11.ipxe", "--default", "--position", "1")
    assert code == 0, err
    assert medullactl("move", "lab", "windows-11", "2")[0] == 0
    code, out, _ = medullactl("show", "lab")
    rows = [line.split()[:3] for line in out.splitlines()[-2:]]
    assert rows == [["1", "continue", "service"], ["2", "windows-11", "master"]]
    assert "chain http://{server}/w11.ipxe" in out
    code, out, _ = medullactl("assign", "lab", "--mac", MAC)
    assert (code, out.strip()) == (0, f"mac {MAC} gets menu mac:{MAC}")
    code, out, _ = medullactl("--json", "list")
    assert {m["name"]: m["source"] for m in json.loads(out)}["mac:" + MAC] == "lab"
    assert medullactl("set", "lab", "--timeout", "2")[0] == 0
    code, out, _ = medullactl("reset", "--mac", MAC)
    assert code == 0 and "timeout:  2s" in out
    code, _, err = medullactl("remove-item", "lab", "continue")
    assert code == 1 and "must keep at least one visible service" in err
    code, out, _ = medullactl("unassign", "--mac", MAC)
    assert (code, out.strip()) == (0, f"mac {MAC} no longer has menu mac:{MAC}")
    code, _, err = medullactl("add-item", "lab", "--master", "Bad", "--chain", "http://x/${a}")
    assert code == 1 and "boot.chain" in err


def test_a_usage_error_is_exit_2(ctl):
    medullactl, _ = ctl
    assert medullactl("assign", "lab")[0] == 2  # no target


# -- medulla-pxe configuration -----------------------------------------------------------

@pytest.mark.parametrize("tftp, http, complaint", [
    ("listen = udp:69x", "", "[tftp] listen: bad UDP port"),
    ("listen = tcp:69:interface=127.0.0.1", "", "[tftp] listen: expected udp:PORT"),
    ("root = {missing}", "", "[tftp] root: {missing} is not a folder"),
    ("", "listen = tcp:80:interface=not-an-address", "[http] listen: interface"),
    ("", "listen = udp:80", "[http] listen: expected tcp:PORT"),
    ("", "server_name = a b", "[http] server_name"),
])
def test_bad_listen_root_or_server_name_exit_78_with_one_line(tmp_path, capsys, tftp, http,
                                                              complaint):
    missing = tmp_path / "missing"
    config = tmp_path / "pxe.ini"
    root = "" if tftp.startswith("root") else f"root = {tmp_path}\n"
    config.write_text(f"[tftp]\n{root}{tftp.format(missing=missing)}\n[http]\n{http}\n")
    assert pxe_main(["--config", str(config)]) == 78
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and complaint.format(missing=missing) in err


def test_registration_refused_for_an_unknown_group_name_is_400(api):
    harness, _ = api
    response = call(harness, "PUT", "/api/v1/pxe/assignments/group/a%20b", {"menu": "default"})
    assert response.code == 400


def test_pxe_registered_machine_shows_as_not_imaged_yet(api):
    _, menus = api
    result_of(menus.register(MAC, "", "lab-pc", "master"))
    from medulla_appliance.ctl.render import render_machines
    machines = result_of(menus.registry.list_machines())
    assert render_machines(machines, 1_763_820_000.0).splitlines()[1].split()[:4] == \
        ["lab-pc", "not", "imaged", "yet"]
