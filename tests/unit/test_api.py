"""The admin HTTP API, driven through a real Site over in-memory transports."""

import json
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyChannel

from medulla_appliance.master import api
from tests.unit.api_harness import NOW, TOKEN, FakeRegistry, Harness, Response, machine


@pytest.fixture
def events():
    captured = []
    globalLogPublisher.addObserver(captured.append)
    yield captured
    globalLogPublisher.removeObserver(captured.append)


@pytest.fixture
def registry():
    return FakeRegistry([machine("ws-01", "m-1"), machine("ws-02", "m-2", online=False),
                         machine("dup", "m-3"), machine("dup", "m-4", online=False)],
                        history={"m-1": [{"ts": NOW - i, "event": "online", "detail": str(i)}
                                         for i in range(80)]})


@pytest.fixture
def http(registry):
    harness = Harness(registry)
    yield harness
    harness.close()


def test_status_adds_the_server_time(http):
    r = http.get("/api/v1/status")
    assert r.code == 200
    assert r.header("content-type") == "application/json; charset=utf-8"
    assert r.header("cache-control") == "no-store"
    assert r.json["server_time"] == NOW
    assert r.json["machines"] == {"total": 3, "online": 2, "offline": 1}


def test_machines_lists_all_then_filters_on_online(http, registry):
    assert [m["uuid"] for m in http.get("/api/v1/machines").json["machines"]] == \
        ["m-1", "m-2", "m-3", "m-4"]
    assert [m["uuid"] for m in http.get("/api/v1/machines?online=true").json["machines"]] == \
        ["m-1", "m-3"]
    assert [m["uuid"] for m in http.get("/api/v1/machines/?online=FALSE").json["machines"]] == \
        ["m-2", "m-4"]
    assert registry.calls == [("list_machines", None), ("list_machines", True),
                              ("list_machines", False)]


@pytest.mark.parametrize("query", ["online=yes", "online=", "online=true&online=false"])
def test_bad_online_value_is_400_and_never_reaches_the_registry(http, registry, query):
    r = http.get("/api/v1/machines?" + query)
    assert r.code == 400
    assert r.json["error"] == "bad-request"
    assert registry.calls == []


def test_machine_show_returns_the_machine_and_its_last_50_events(http, registry):
    r = http.get("/api/v1/machines/ws-01")
    assert r.code == 200
    assert r.json["uuid"] == "m-1" and r.json["online"] is True
    assert [e["detail"] for e in r.json["history"]] == [str(i) for i in range(50)]
    assert ("machine_history", "m-1", 50) in registry.calls


def test_machine_name_is_percent_decoded_utf8(http, registry):
    registry.machines.append(machine("poste-é/1", "m-9"))
    r = http.get("/api/v1/machines/" + urllib.parse.quote("poste-é/1", safe=""))
    assert r.code == 200 and r.json["hostname"] == "poste-é/1"
    assert "poste-é/1".encode("utf-8") in r.raw_body  # UTF-8, not \u escapes


def test_unknown_machine_is_404_with_the_name_in_the_message(http):
    r = http.get("/api/v1/machines/ghost")
    assert r.code == 404
    assert r.json == {"error": "not-found", "message": "no machine named 'ghost'"}


def test_long_or_hostile_names_are_cut_when_echoed(http):
    r = http.get("/api/v1/machines/" + "A" * 500 + "%1b%5b2J")
    assert r.code == 404
    assert len(r.json["message"]) < 240
    assert b"\x1b" not in r.raw_body


def test_ambiguous_name_is_409_listing_the_candidates(http):
    r = http.get("/api/v1/machines/dup")
    assert r.code == 409
    assert r.json["error"] == "ambiguous"
    assert "2 machines match 'dup'" in r.json["message"]
    assert r.json["candidates"] == [
        {"uuid": "m-3", "hostname": "dup", "jid": "dup.k3x@medulla.test/5254"},
        {"uuid": "m-4", "hostname": "dup", "jid": "dup.k3x@medulla.test/5254"}]


@pytest.mark.parametrize("target", ["/", "/api", "/api/v1", "/api/v2/status",
                                    "/api/v1/machines/a/b", "/api/v1/statusx"])
def test_unknown_endpoints_are_404_json(http, target):
    r = http.get(target)
    assert r.code == 404
    assert r.json == {"error": "not-found", "message": "no such endpoint"}


@pytest.mark.parametrize("target", ["/api/v1/machines", "/api/v1/status",
                                    "/api/v1/machines/ws-01"])
@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT"])
def test_wrong_method_is_405_with_allow(http, registry, method, target):
    r = http.request(method, target, headers=["Content-Length: 0"])
    assert r.code == 405
    assert r.header("allow") == "GET, HEAD"
    assert r.json == {"error": "method-not-allowed",
                      "message": "only GET and HEAD are supported here"}
    assert registry.calls == []


# -- POST /api/v1/machines/<name>/reset-key --------------------------------------------

def test_reset_key_resets_the_named_machine_and_says_which(http, registry):
    r = http.post("/api/v1/machines/ws-01/reset-key")
    assert r.code == 200
    assert r.json == {"uuid": "m-1", "hostname": "ws-01", "key_reset": True}
    assert registry.calls == [("find_machines", "ws-01"), ("reset_key", "m-1")]


@pytest.mark.parametrize("name", ["m-2", "ws-02.k3x@medulla.test/5254"])
def test_reset_key_finds_the_machine_by_uuid_or_jid(http, registry, name):
    r = http.post("/api/v1/machines/%s/reset-key" % urllib.parse.quote(name, safe=""))
    assert r.code == 200 and r.json["uuid"] == "m-2"
    assert ("reset_key", "m-2") in registry.calls


def test_reset_key_is_logged_with_the_machine_and_the_peer(http, events):
    http.post("/api/v1/machines/ws-01/reset-key")
    (audit,) = [e for e in events if "reset the key" in e.get("log_format", "")]
    assert audit["log_level"].name == "info"
    assert formatEvent(audit) == ("API: 127.0.0.1:40000 reset the key SHA256:x of machine "
                                  "ws-01 (m-1); its next enrolment pins a new key")


def test_reset_key_of_an_unknown_machine_is_404_and_resets_nothing(http, registry, events):
    r = http.post("/api/v1/machines/ghost/reset-key")
    assert r.code == 404
    assert r.json == {"error": "not-found", "message": "no machine named 'ghost'"}
    assert [c for c in registry.calls if c[0] == "reset_key"] == []
    assert not [e for e in events if "reset the key" in e.get("log_format", "")]


def test_reset_key_of_an_ambiguous_name_is_409_and_resets_nothing(http, registry):
    r = http.post("/api/v1/machines/dup/reset-key")
    assert r.code == 409
    assert r.json["error"] == "ambiguous" and r.json["count"] == 2
    assert [c["uuid"] for c in r.json["candidates"]] == ["m-3", "m-4"]
    assert [c for c in registry.calls if c[0] == "reset_key"] == []


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
def test_reset_key_is_post_only(http, registry, method):
    _, transport = http.send(method, "/api/v1/machines/ws-01/reset-key",
                             headers=["Content-Length: 0"])
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 405 ")
    assert b"Allow: POST" in head.split(b"\r\n")
    if method != "HEAD":
        assert json.loads(body) == {"error": "method-not-allowed",
                                    "message": "only POST is supported here"}
    assert registry.calls == []


@pytest.mark.parametrize("token", [None, "wrong-secret-value"])
def test_reset_key_needs_the_token(http, registry, token):
    r = http.post("/api/v1/machines/ws-01/reset-key", token=token)
    assert r.code == 401
    assert registry.calls == []


def test_reset_key_failure_in_the_registry_is_500_and_no_audit_line(http, registry, events):
    original = registry.reset_key

    def failing(uuid):
        original(uuid)
        return defer.fail(RuntimeError("database is locked"))
    registry.reset_key = failing
    r = http.post("/api/v1/machines/ws-01/reset-key")
    assert r.code == 500 and r.json["error"] == "internal"
    assert not [e for e in events if "reset the key" in e.get("log_format", "")]


@pytest.mark.parametrize("target", ["/api/v1/machines/ws-01/reset-key/",
                                    "/api/v1/machines//reset-key",
                                    "/api/v1/machines/ws-01/reset-keys",
                                    "/api/v1/machines/ws-01/reset-key/x"])
def test_reset_key_route_is_exact(http, registry, target):
    r = http.post(target)
    if target.endswith("reset-key/"):
        assert r.code == 200  # one trailing slash is tolerated, as everywhere
    else:
        assert r.code == 404 and r.json["error"] == "not-found"
        assert registry.calls == []


def test_a_small_request_body_is_ignored(http, registry):
    body = json.dumps({"reason": "reinstalled", "pad": "x" * 100}).encode()
    r = http.post("/api/v1/machines/ws-01/reset-key", body=body,
                  headers=["Content-Type: application/json"])
    assert r.code == 200
    assert registry.calls == [("find_machines", "ws-01"), ("reset_key", "m-1")]


def test_a_form_body_cannot_add_parameters(http, registry):
    r = http.post("/api/v1/machines/ws-01/reset-key", body=b"name=ws-02",
                  headers=["Content-Type: application/x-www-form-urlencoded"])
    assert r.code == 200 and r.json["uuid"] == "m-1"


def test_a_body_of_exactly_the_limit_is_accepted(http):
    r = http.post("/api/v1/machines/ws-01/reset-key", body=b"x" * api.MAX_BODY_BYTES)
    assert r.code == 200


def test_a_body_over_64_kib_is_413_before_auth_and_logged(http, registry, events):
    r = http.post("/api/v1/machines/ws-01/reset-key", body=b"x" * (api.MAX_BODY_BYTES + 1),
                  token=None)
    assert r.code == 413
    assert r.json == {"error": "body-too-large",
                      "message": "the request body is longer than 65536 bytes"}
    assert registry.calls == []
    (refusal,) = [e for e in events if e.get("log_format", "").startswith("API refused")]
    assert formatEvent(refusal).endswith(": 413 the request body is longer than 65536 bytes")


def test_a_chunked_body_over_the_limit_is_413_and_not_kept(http, registry):
    chunk = b"x" * 1000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(66)) + b"0\r\n\r\n"
    proto, transport = http.send("POST", "/api/v1/machines/ws-01/reset-key",
                                 headers=["Transfer-Encoding: chunked"], body=body)
    assert Response(transport.value()).code == 413
    assert registry.calls == []


def test_a_huge_body_is_dropped_as_it_arrives():
    channel = DummyChannel()
    channel.site = api.make_api_site(FakeRegistry(), TOKEN, clock=Clock())
    request = api.BoundedRequest(channel)
    request.gotLength(None)
    for _ in range(1000):
        request.handleContentChunk(b"x" * 1024)
    assert request.body_too_large and request.content.tell() == 0
    declared = api.BoundedRequest(channel)
    declared.gotLength(10 * 1024 * 1024)
    declared.handleContentChunk(b"x" * 10)
    assert declared.body_too_large and declared.content.tell() == 0


def test_head_gives_headers_without_body(http):
    _, transport = http.send("HEAD", "/api/v1/status")
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and body == b""
    assert b"Content-Length: " in head


@pytest.mark.parametrize("token,reason", [
    (None, "no bearer token"), ("wrong-secret-value", "wrong token"),
    (TOKEN + "x", "wrong token"), ("", "not a bearer token")])
def test_missing_or_wrong_token_is_401_logged_once_without_the_token(
        http, registry, events, token, reason):
    r = http.get("/api/v1/status", token=token)
    assert r.code == 401
    assert r.json["error"] == "unauthorized"
    assert r.header("www-authenticate").startswith("Bearer")
    assert registry.calls == []
    refusals = [e for e in events if e.get("log_format", "").startswith("API refused")]
    assert len(refusals) == 1
    line = formatEvent(refusals[0])
    assert line == f"API refused GET /api/v1/status from 127.0.0.1:40000: 401 {reason}"
    for event in events:
        text = repr(event) + formatEvent(event)
        assert TOKEN not in text and "wrong-secret-value" not in text


def test_basic_auth_and_duplicate_headers_are_refused(http):
    assert http.get("/api/v1/status", token=None,
                    headers=["Authorization: Basic " + TOKEN]).code == 401
    assert http.get("/api/v1/status", headers=["Authorization: Bearer " + TOKEN]).code == 401


def test_scheme_is_case_insensitive(http):
    assert http.get("/api/v1/status", token=None,
                    headers=["Authorization: bearer " + TOKEN]).code == 200


def test_overlong_target_is_414_before_auth(http, registry, events):
    target = "/api/v1/machines/" + "x" * api.MAX_URI_BYTES
    r = http.get(target, token=None)
    assert r.code == 414
    assert r.json["error"] == "uri-too-long"
    assert registry.calls == []
    (refusal,) = [e for e in events if e.get("log_format", "").startswith("API refused")]
    assert len(refusal["path"]) <= api.MAX_ECHO_CHARS + 1


def test_registry_error_is_500_and_a_logged_failure(http, registry, events):
    registry.fail = RuntimeError("database is locked")
    r = http.get("/api/v1/machines")
    assert r.code == 500
    assert r.json["error"] == "internal"
    assert b"database is locked" not in r.raw_body
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)


def test_late_registry_failure_still_answers_500(http, registry, events):
    registry.pending = defer.Deferred()
    _, transport = http.send("GET", "/api/v1/status")
    assert transport.value() == b""  # still waiting, connection open
    registry.pending.errback(ValueError("boom"))
    assert Response(transport.value()).code == 500
    assert len([e for e in events if "log_failure" in e]) == 1


def test_unserialisable_registry_data_is_500_not_a_hang(http, registry, events):
    registry.machines = [{"uuid": "m-1", "online": True, "last_seen": float("nan")}]
    assert http.get("/api/v1/machines").code == 500
    assert len([e for e in events if "log_failure" in e]) == 1


def test_client_gone_before_the_registry_answers(http, registry, events):
    registry.pending = defer.Deferred()
    proto, transport = http.send("GET", "/api/v1/machines")
    proto.connectionLost(Failure(ConnectionDone()))
    registry.pending.callback([machine("ws-01", "m-1")])
    assert transport.value() == b""
    assert [e for e in events if "log_failure" in e] == []
    http.connections.remove(proto)


def test_hostile_data_from_machines_leaves_as_escaped_json(http, registry):
    registry.machines = [machine("\x1b[2J\x07evil\u202e", "m-1")]
    r = http.get("/api/v1/machines")
    assert b"\x1b" not in r.raw_body and b"\x07" not in r.raw_body
    assert r.json["machines"][0]["hostname"] == "\x1b[2J\x07evil\u202e"


def test_idle_connection_is_closed_after_the_timeout(http):
    proto, transport = http.send("GET", "/api/v1/status", headers=[])
    assert not transport.disconnecting
    http.clock.advance(api.IDLE_TIMEOUT + 1)
    assert transport.disconnecting


def test_site_hides_tracebacks():
    assert api.make_api_site(FakeRegistry(), TOKEN, clock=Clock()).displayTracebacks is False


def test_empty_token_is_a_programming_error():
    with pytest.raises(ValueError):
        api.make_api_resource(FakeRegistry(), "", clock=Clock())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=30), min_size=0, max_size=5),
       st.text(max_size=20))
def test_any_target_gets_a_json_answer_never_a_500(segments, query):
    harness = Harness(FakeRegistry([machine("ws-01", "m-1")]))
    target = "/" + "/".join(urllib.parse.quote(s, safe="") for s in segments)
    target += "?" + urllib.parse.quote(query, safe="=&")
    r = harness.get(target)
    assert r.code in (200, 400, 404, 405, 409, 414)
    assert isinstance(r.json, dict)
    harness.close()
