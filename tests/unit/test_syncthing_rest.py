"""The Syncthing REST client: a real twisted.web Agent talking HTTP/1.1 to a twisted.web
Site, both in memory (iosim transports), time from a task.Clock."""

import json

import pytest
from twisted.internet import defer, error
from twisted.internet.task import Clock
from twisted.test import iosim
from twisted.web import resource, server
from twisted.web.client import Agent
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from medulla_appliance.syncthing import rest
from medulla_appliance.syncthing.config import Peer, Settings
from medulla_appliance.syncthing.configure import apply

API_KEY = "k3y-of-the-test"
RELAY_ID = "YPDKACQ-DJ5TONZ-4ZOLBDY-ZNMJYSK-O6IL4ER-D32AQID-HAJARTL-3LRCTA7"


class FakeAPI(resource.Resource):
    """Answers from ``routes[(method, path)]``: (status, body) or a callable(request)."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.routes = {}
        self.requests = []
        self.held = []  # requests answered NOT_DONE_YET

    def render(self, request):
        body = request.content.read()
        self.requests.append({
            "method": request.method.decode(), "path": request.path.decode(),
            "args": {k.decode(): v[0].decode() for k, v in request.args.items()},
            "key": request.getHeader("x-api-key"),
            "body": json.loads(body) if body else None})
        route = self.routes.get((request.method.decode(), request.path.decode()))
        if route is None:
            request.setResponseCode(404)
            return b"not found\n"
        if callable(route):
            return route(request)
        status, payload = route
        request.setResponseCode(status)
        if isinstance(payload, bytes):
            return payload
        request.setHeader("content-type", "application/json")
        return json.dumps(payload).encode()


@implementer(IAgentEndpointFactory)
class InMemory:
    """Endpoints that connect the Agent straight to ``site`` over iosim transports."""

    def __init__(self, site, clock):
        self.site, self.clock = site, clock
        self.pumps = []
        self.refuse = False

    def endpointForURI(self, uri):
        return self

    def connect(self, factory):
        if self.refuse:
            return defer.fail(error.ConnectionRefusedError("refused"))
        client = factory.buildProtocol(None)
        srv = self.site.buildProtocol(None)
        self.pumps.append(iosim.connect(srv, iosim.makeFakeServer(srv), client,
                                        iosim.makeFakeClient(client), greet=False,
                                        clock=self.clock))
        return defer.succeed(client)

    def flush(self):
        for _ in range(50):
            if not any([pump.pump() for pump in self.pumps]):
                return


@pytest.fixture
def api():
    clock = Clock()
    fake = FakeAPI()
    site = server.Site(fake)
    wire = InMemory(site, clock)
    client = rest.SyncthingClient("http://127.0.0.1:8384/", API_KEY, clock=clock,
                                  agent=Agent.usingEndpointFactory(clock, wire), timeout=5)
    return fake, wire, client, clock


def result_of(d, wire):
    wire.flush()
    out = []
    d.addBoth(out.append)
    assert out, "the call did not finish"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def test_get_sends_the_api_key_and_decodes_json(api):
    fake, wire, client, _ = api
    fake.routes[("GET", "/rest/system/status")] = (200, {"myID": RELAY_ID})
    assert result_of(client.status(), wire) == {"myID": RELAY_ID}
    assert fake.requests[0]["key"] == API_KEY


def test_put_and_patch_send_json_bodies(api):
    fake, wire, client, _ = api
    fake.routes[("PUT", f"/rest/config/devices/{RELAY_ID}")] = (200, b"")
    fake.routes[("PATCH", "/rest/config/options")] = (200, b"")
    assert result_of(client.put_device({"deviceID": RELAY_ID, "name": "lyon"}), wire) is None
    assert result_of(client.patch_options({"relaysEnabled": False}), wire) is None
    assert [r["body"] for r in fake.requests] == [{"deviceID": RELAY_ID, "name": "lyon"},
                                                  {"relaysEnabled": False}]


@pytest.mark.parametrize("status, kind", [(403, rest.SyncthingAuthError),
                                          (401, rest.SyncthingAuthError),
                                          (404, rest.SyncthingNotFound),
                                          (500, rest.SyncthingHTTPError)])
def test_http_errors_are_typed(api, status, kind):
    fake, wire, client, _ = api
    fake.routes[("GET", "/rest/db/status")] = (status, b"folder nope does not exist\n")
    with pytest.raises(kind) as caught:
        result_of(client.db_status("nope"), wire)
    assert caught.value.status == status and "does not exist" in str(caught.value)


def test_a_missing_folder_is_none(api):
    fake, wire, client, _ = api
    assert result_of(client.folder("medulla-packages"), wire) is None
    assert fake.requests[0]["path"] == "/rest/config/folders/medulla-packages"


def test_an_answer_that_is_not_json_is_a_protocol_error(api):
    fake, wire, client, _ = api
    fake.routes[("GET", "/rest/system/status")] = (200, b"<html>a proxy</html>")
    with pytest.raises(rest.SyncthingProtocolError):
        result_of(client.status(), wire)


def test_an_oversized_answer_is_refused(api):
    fake, wire, client, _ = api
    client.max_body = 1000
    fake.routes[("GET", "/rest/system/status")] = (200, {"x": "y" * 5000})
    with pytest.raises(rest.SyncthingProtocolError, match="larger than 1000"):
        result_of(client.status(), wire)


def test_no_answer_before_the_deadline_is_a_timeout(api):
    fake, wire, client, clock = api
    fake.routes[("GET", "/rest/system/status")] = lambda request: server.NOT_DONE_YET
    d = client.status()
    wire.flush()
    assert not d.called
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.2)
    with pytest.raises(rest.SyncthingTimeout, match="no answer in 5s"):
        result_of(d, wire)
    assert not clock.getDelayedCalls()


def test_the_event_poll_waits_longer_than_its_own_timeout(api):
    fake, wire, client, clock = api
    fake.routes[("GET", "/rest/events")] = lambda request: (fake.held.append(request)
                                                            or server.NOT_DONE_YET)
    d = client.events(7, timeout=60, types=("ItemStarted", "ItemFinished"))
    wire.flush()
    assert fake.requests[0]["args"] == {"since": "7", "timeout": "60",
                                        "events": "ItemStarted,ItemFinished"}
    clock.advance(60)
    assert not d.called
    fake.held[0].write(b"[]")
    fake.held[0].finish()
    assert result_of(d, wire) == []


def test_syncthing_not_running_is_unavailable(api):
    _, wire, client, _ = api
    wire.refuse = True
    with pytest.raises(rest.SyncthingUnavailable, match="GET /rest/system/status"):
        result_of(client.status(), wire)


def test_a_connection_cut_mid_answer_is_unavailable(api):
    fake, wire, client, _ = api

    def cut(request):
        request.setHeader("content-length", b"1000")
        request.write(b'{"myID": ')
        request.channel.transport.loseConnection()
        return server.NOT_DONE_YET

    fake.routes[("GET", "/rest/system/status")] = cut
    with pytest.raises(rest.SyncthingUnavailable):
        result_of(client.status(), wire)


def test_need_joins_every_page_and_section(api, monkeypatch):
    fake, wire, client, _ = api
    monkeypatch.setattr(rest, "PAGE_SIZE", 2)
    pages = {"1": {"progress": [{"name": "a/1"}], "queued": [], "rest": [{"name": "a/2"}]},
             "2": {"progress": [], "queued": [], "rest": [{"name": "b/1"}]}}

    def need(request):
        return json.dumps(pages[request.args[b"page"][0].decode()]).encode()

    fake.routes[("GET", "/rest/db/need")] = need
    d = client.need("medulla-packages")
    for _ in range(3):
        wire.flush()
    assert [item["name"] for item in result_of(d, wire)] == ["a/1", "a/2", "b/1"]
    assert [r["args"]["page"] for r in fake.requests] == ["1", "2"]


def test_configuration_over_http_is_written_once(api):
    """Syncthing 1.19's config endpoints as the real client uses them: a second apply
    reads and writes nothing."""
    fake, wire, client, _ = api
    state = {"options": {"listenAddresses": ["default"], "globalAnnounceEnabled": True,
                         "localAnnounceEnabled": False, "relaysEnabled": False,
                         "natEnabled": False, "urAccepted": -1, "crashReportingEnabled": False,
                         "autoUpgradeIntervalH": 0, "startBrowser": False},
             "devices": [], "folder": None, "ignore": None}
    fake.routes[("GET", "/rest/config/options")] = lambda r: json.dumps(
        state["options"]).encode()
    fake.routes[("PATCH", "/rest/config/options")] = lambda r: state["options"].update(
        fake.requests[-1]["body"]) or b""
    fake.routes[("GET", "/rest/config/devices")] = lambda r: json.dumps(
        state["devices"]).encode()
    fake.routes[("PUT", f"/rest/config/devices/{RELAY_ID}")] = lambda r: state[
        "devices"].append(fake.requests[-1]["body"]) or b""

    def folder(request):
        if state["folder"] is None:
            request.setResponseCode(404)
            return b"No folder with given ID\n"
        return json.dumps(state["folder"]).encode()

    fake.routes[("GET", "/rest/config/folders/medulla-packages")] = folder
    fake.routes[("PUT", "/rest/config/folders/medulla-packages")] = lambda r: state.update(
        folder=fake.requests[-1]["body"]) or b""
    fake.routes[("GET", "/rest/db/ignores")] = lambda r: json.dumps(
        {"ignore": state["ignore"]}).encode()
    fake.routes[("POST", "/rest/db/ignores")] = lambda r: state.update(
        ignore=fake.requests[-1]["body"]["ignore"]) or b""
    fake.routes[("GET", "/rest/config/restart-required")] = (200, {"requiresRestart": False})
    settings = Settings(role="master", name="master", packages_root="/srv/packages",
                        peers=(Peer("lyon", RELAY_ID, ("tcp://10.0.0.2:22000",)),),
                        listen=("tcp://0.0.0.0:22000",))
    d = defer.ensureDeferred(apply(client, settings, "MASTER"))
    for _ in range(20):
        wire.flush()
    assert result_of(d, wire) == ["options globalAnnounceEnabled, listenAddresses",
                                  "device lyon added", "folder medulla-packages added",
                                  "ignore patterns"]
    writes = [r for r in fake.requests if r["method"] != "GET"]
    assert [w["method"] for w in writes] == ["PATCH", "PUT", "PUT", "POST"]
    assert state["folder"]["type"] == "sendonly"
    assert state["ignore"] == ["/.complete", "/.incoming-*", ".stversions"]
    fake.requests.clear()
    d = defer.ensureDeferred(apply(client, settings, "MASTER"))
    for _ in range(20):
        wire.flush()
    assert result_of(d, wire) == []
    assert {r["method"] for r in fake.requests} == {"GET"}


def test_the_key_is_read_when_needed_and_again_after_a_refusal(api):
    fake, wire, client, _ = api
    keys = iter([rest.SyncthingKeyError("config.xml not written yet"), "old", "new"])

    def source():
        key = next(keys)
        if isinstance(key, Exception):
            raise key
        return key

    client.api_key, client.key_source = None, source
    fake.routes[("GET", "/rest/system/status")] = lambda r: (
        b'{"myID": "X"}' if r.getHeader("x-api-key") == "new" else r.setResponseCode(403)
        or b"Forbidden\n")
    with pytest.raises(rest.SyncthingKeyError):
        result_of(client.status(), wire)
    with pytest.raises(rest.SyncthingAuthError):
        result_of(client.status(), wire)  # "old": refused, so forgotten
    assert result_of(client.status(), wire) == {"myID": "X"}
    assert [r["key"] for r in fake.requests] == ["old", "new"]
