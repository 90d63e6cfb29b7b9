"""medulla-relay's HTTP package service, in memory: a real twisted.web Site and HTTPChannel
over StringTransport, a task.Clock, real files in a temp folder, no sockets."""

import hashlib
import json
import os

import pytest
from twisted.internet import task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import Logger

from medulla_appliance.core import keys
from medulla_appliance.relay import web
from medulla_appliance.relay.harness import mark_complete, token_for, write_package
from medulla_appliance.relay.limits import DownloadSlots
from medulla_appliance.relay.packages import PackageStore
from medulla_appliance.relay.producer import CHUNK_BYTES

NOW = 1_763_820_000.0
MASTER = keys.generate_private_key()
OTHER = keys.generate_private_key()
PKG = "pkg-1.0"
SMALL = bytes(range(256)) * 4          # 1 KiB
BIG_SIZE = 3 * CHUNK_BYTES + 7


class PausingTransport(StringTransport):
    """A transport whose client reads nothing while ``full`` (the producer is paused)."""

    full = False

    def write(self, data):
        super().write(data)
        if self.full and self.producer is not None:
            self.producer.pauseProducing()


class Relay:
    """A PackageResource on a Site, and a way to send it raw HTTP requests."""

    def __init__(self, root, *, total=100, per_client=100, idle=60.0):
        self.root = root
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.events = []
        self.slots = DownloadSlots(total, per_client)
        self.resource = web.PackageResource(PackageStore(str(root)), MASTER.public_key(),
                                            self.slots, clock=self.clock, stall_timeout=idle)
        self.resource.refusals.log = Logger(observer=self.events.append)
        self.site = web.make_site(self.resource, clock=self.clock, idle_timeout=idle)

    def connect(self, host="10.0.0.5", port=40000, transport_class=StringTransport):
        address = IPv4Address("TCP", host, port)
        channel = self.site.buildProtocol(address)
        transport = transport_class(peerAddress=address)
        channel.makeConnection(transport)
        return channel, transport

    def send(self, raw: bytes, **connect):
        channel, transport = self.connect(**connect)
        channel.dataReceived(raw)
        return Response(transport.value()), channel, transport

    def get(self, path, token=None, headers=(), method="GET", **connect):
        lines = [f"{method} {path} HTTP/1.1", "Host: relay"]
        if token is not None:
            lines.append(f"Authorization: Bearer {token}")
        lines += [f"{name}: {value}" for name, value in headers]
        response, _, _ = self.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"),
                                   **connect)
        return response

    def refusals(self):
        return [e for e in self.events if "refused" in e.get("log_format", "")]


class Response:
    def __init__(self, raw: bytes):
        self.raw = raw
        head, _, self.body = raw.partition(b"\r\n\r\n")
        status, *lines = head.decode("latin-1").split("\r\n")
        self.code = int(status.split()[1]) if status else None
        self.headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def json(self):
        return json.loads(self.body)


@pytest.fixture
def relay(tmp_path):
    root = tmp_path / "packages"
    write_package(root, PKG, {"small.bin": SMALL, "dir/big.bin": BIG_SIZE, "empty.bin": b"",
                              "one.bin": b"x", "with space.txt": b"hello"})
    return Relay(root)


def token(package_id=PKG, key=MASTER, ttl=3600):
    return token_for(key, package_id, ttl=ttl, now=NOW)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def file_bytes(relay, rel):
    return (relay.root / PKG / rel).read_bytes()


# -- whole files --------------------------------------------------------------------------

def test_get_returns_the_file_with_length_etag_and_checksum(relay):
    response = relay.get(f"/packages/{PKG}/small.bin", token())
    assert response.code == 200
    assert response.body == SMALL
    assert response.headers["content-length"] == str(len(SMALL))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"] == f'"{sha(SMALL)}"'
    assert response.headers["x-checksum-sha256"] == sha(SMALL)


def test_a_file_of_several_chunks_in_a_sub_folder_arrives_whole(relay):
    response = relay.get(f"/packages/{PKG}/dir/big.bin", token())
    assert response.code == 200 and response.body == file_bytes(relay, "dir/big.bin")
    assert relay.slots.active == 0


def test_empty_and_one_byte_files(relay):
    empty = relay.get(f"/packages/{PKG}/empty.bin", token())
    assert (empty.code, empty.body, empty.headers["content-length"]) == (200, b"", "0")
    one = relay.get(f"/packages/{PKG}/one.bin", token())
    assert (one.code, one.body) == (200, b"x")


def test_percent_encoded_names_are_decoded(relay):
    assert relay.get(f"/packages/{PKG}/with%20space.txt", token()).body == b"hello"


def test_descriptor_json_is_served_with_the_sha256_of_its_bytes(relay):
    response = relay.get(f"/packages/{PKG}/descriptor.json", token())
    raw = (relay.root / PKG / "descriptor.json").read_bytes()
    assert response.code == 200 and response.body == raw
    assert response.headers["etag"] == f'"{sha(raw)}"'
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body)["files"]


def test_token_in_the_query_string_works_too(relay):
    response = relay.get(f"/packages/{PKG}/small.bin?token={token()}")
    assert response.code == 200 and response.body == SMALL


def test_head_gives_the_headers_without_a_body(relay):
    response = relay.get(f"/packages/{PKG}/dir/big.bin", token(), method="HEAD")
    assert response.code == 200 and response.body == b""
    assert response.headers["content-length"] == str(BIG_SIZE)
    assert response.headers["x-checksum-sha256"] == sha(file_bytes(relay, "dir/big.bin"))
    assert relay.slots.active == 0


def test_head_with_a_range_gives_the_partial_headers(relay):
    response = relay.get(f"/packages/{PKG}/small.bin", token(), method="HEAD",
                         headers=[("Range", "bytes=10-19")])
    assert response.code == 206 and response.body == b""
    assert response.headers["content-range"] == f"bytes 10-19/{len(SMALL)}"
    assert response.headers["content-length"] == "10"


# -- ranges --------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, first, last", [
    ("0-0", 0, 0), ("1023-1023", 1023, 1023), ("-1", 1023, 1023), ("1000-", 1000, 1023),
    ("10-20", 10, 20), ("1000-5000", 1000, 1023), ("-5000", 0, 1023),
])
def test_single_ranges_are_206_with_content_range(relay, spec, first, last):
    response = relay.get(f"/packages/{PKG}/small.bin", token(),
                         headers=[("Range", f"bytes={spec}")])
    assert response.code == 206
    assert response.body == SMALL[first:last + 1]
    assert response.headers["content-range"] == f"bytes {first}-{last}/1024"
    assert response.headers["content-length"] == str(last - first + 1)


def test_a_range_of_a_big_file_resumes_mid_chunk(relay):
    data = file_bytes(relay, "dir/big.bin")
    start = CHUNK_BYTES + 12345
    response = relay.get(f"/packages/{PKG}/dir/big.bin", token(),
                         headers=[("Range", f"bytes={start}-")])
    assert response.code == 206 and response.body == data[start:]


@pytest.mark.parametrize("spec", ["1024-", "1024-2000", "-0", "5000-"])
def test_a_range_beyond_the_end_is_416(relay, spec):
    response = relay.get(f"/packages/{PKG}/small.bin", token(),
                         headers=[("Range", f"bytes={spec}")])
    assert response.code == 416
    assert response.headers["content-range"] == "bytes */1024"


def test_any_range_of_an_empty_file_is_416(relay):
    response = relay.get(f"/packages/{PKG}/empty.bin", token(), headers=[("Range", "bytes=0-")])
    assert response.code == 416 and response.headers["content-range"] == "bytes */0"


def test_several_ranges_are_served_whole(relay):
    response = relay.get(f"/packages/{PKG}/small.bin", token(),
                         headers=[("Range", "bytes=0-1,5-6")])
    assert response.code == 200 and response.body == SMALL


def test_if_range_with_the_etag_resumes_and_with_another_restarts(relay):
    etag = f'"{sha(SMALL)}"'
    resumed = relay.get(f"/packages/{PKG}/small.bin", token(),
                        headers=[("Range", "bytes=1000-"), ("If-Range", etag)])
    assert resumed.code == 206 and resumed.body == SMALL[1000:]
    restarted = relay.get(f"/packages/{PKG}/small.bin", token(),
                          headers=[("Range", "bytes=1000-"), ("If-Range", '"stale"')])
    assert restarted.code == 200 and restarted.body == SMALL


def test_a_range_of_descriptor_json(relay):
    raw = (relay.root / PKG / "descriptor.json").read_bytes()
    response = relay.get(f"/packages/{PKG}/descriptor.json", token(),
                         headers=[("Range", "bytes=-10")])
    assert response.code == 206 and response.body == raw[-10:]


# -- tokens --------------------------------------------------------------------------------

def assert_refused(response, code, error):
    assert response.code == code, response.raw
    assert response.json() == {"error": error}
    assert response.headers["content-type"] == "application/json"


def test_no_token_is_401_with_www_authenticate(relay):
    response = relay.get(f"/packages/{PKG}/small.bin")
    assert_refused(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("headers", [
    [("Authorization", "Basic dXNlcjpwdw==")],
    [("Authorization", "Bearer")],
    [("Authorization", "Bearer a"), ("Authorization", "Bearer b")],
])
def test_other_authorization_forms_are_401(relay, headers):
    assert relay.get(f"/packages/{PKG}/small.bin", headers=headers).code == 401


def test_a_token_signed_by_another_key_is_401(relay):
    assert_refused(relay.get(f"/packages/{PKG}/small.bin", token(key=OTHER)), 401,
                   "bad-signature")


def test_a_garbage_token_is_401(relay):
    assert_refused(relay.get(f"/packages/{PKG}/small.bin", "not-a-token"), 401, "malformed")


def test_a_token_for_another_package_is_403(relay):
    write_package(relay.root, "other", {"a": b"a"})
    assert_refused(relay.get(f"/packages/{PKG}/small.bin", token("other")), 403,
                   "wrong-package")


def test_an_expired_token_is_403(relay):
    expired = token(ttl=10)
    relay.clock.advance(10 + 60)
    assert_refused(relay.get(f"/packages/{PKG}/small.bin", expired), 403, "expired")


def test_two_query_tokens_are_401(relay):
    response = relay.get(f"/packages/{PKG}/small.bin?token={token()}&token={token()}")
    assert response.code == 401


def test_the_token_is_checked_before_telling_whether_a_package_exists(relay):
    assert relay.get("/packages/nothing-here/a.bin").code == 401
    assert_refused(relay.get("/packages/nothing-here/a.bin", token("nothing-here")), 404,
                   "not-synchronized")


# -- what is served ------------------------------------------------------------------------

def test_a_package_without_its_completion_marker_is_not_synchronized(relay):
    write_package(relay.root, "half", {"a.bin": b"abc"}, complete=False)
    assert_refused(relay.get("/packages/half/a.bin", token("half")), 404, "not-synchronized")
    mark_complete(relay.root, "half")
    assert relay.get("/packages/half/a.bin", token("half")).body == b"abc"


def test_a_file_short_of_its_declared_size_is_not_synchronized(relay):
    write_package(relay.root, "short", {"a.bin": b"abcdef"})
    (relay.root / "short" / "a.bin").write_bytes(b"abc")
    assert_refused(relay.get("/packages/short/a.bin", token("short")), 404, "not-synchronized")
    assert relay.get("/packages/short/descriptor.json", token("short")).code == 404


def test_a_file_truncated_after_the_check_is_not_served(relay):
    assert relay.get(f"/packages/{PKG}/small.bin", token()).code == 200
    (relay.root / PKG / "small.bin").write_bytes(b"short")
    assert_refused(relay.get(f"/packages/{PKG}/small.bin", token()), 404, "not-synchronized")


def test_removing_the_marker_stops_the_serving_at_once(relay):
    assert relay.get(f"/packages/{PKG}/small.bin", token()).code == 200
    (relay.root / ".complete" / PKG).unlink()
    assert relay.get(f"/packages/{PKG}/small.bin", token()).code == 404


def test_a_bad_descriptor_is_not_synchronized(relay):
    write_package(relay.root, "bad", {"a.bin": b"abc"})
    (relay.root / "bad" / "descriptor.json").write_text('{"files": [{"path": "../x"}]}')
    assert_refused(relay.get("/packages/bad/a.bin", token("bad")), 404, "not-synchronized")


def test_a_file_not_in_the_descriptor_is_404_even_if_on_disk(relay):
    (relay.root / PKG / "extra.bin").write_bytes(b"not listed")
    assert_refused(relay.get(f"/packages/{PKG}/extra.bin", token()), 404, "not-found")
    assert relay.get(f"/packages/{PKG}/dir", token()).code == 404


def test_a_listed_symlink_leading_out_of_the_package_is_never_served(relay, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret!")
    write_package(relay.root, "link", {"a.bin": b"secret!"})
    (relay.root / "link" / "a.bin").unlink()
    (relay.root / "link" / "a.bin").symlink_to(secret)
    assert_refused(relay.get("/packages/link/a.bin", token("link")), 404, "not-synchronized")


def test_a_symlink_swapped_in_after_the_check_is_not_followed_out(relay, tmp_path):
    assert relay.get(f"/packages/{PKG}/one.bin", token()).code == 200
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"y")
    target = relay.root / PKG / "one.bin"
    target.unlink()
    target.symlink_to(outside)
    response = relay.get(f"/packages/{PKG}/one.bin", token())
    assert response.code == 404 and b"y" not in response.body


def test_a_symlink_inside_the_package_is_served(relay):
    write_package(relay.root, "inner", {"real.bin": b"data", "alias.bin": b"data"})
    (relay.root / "inner" / "alias.bin").unlink()
    (relay.root / "inner" / "alias.bin").symlink_to("real.bin")
    assert relay.get("/packages/inner/alias.bin", token("inner")).body == b"data"


@pytest.mark.parametrize("path, code", [
    (f"/packages/{PKG}/../{PKG}/small.bin", 400),
    (f"/packages/{PKG}/%2e%2e/{PKG}/small.bin", 400),
    (f"/packages/{PKG}/%2E%2E/x", 400),
    (f"/packages/{PKG}/dir%2fbig.bin", 400),
    (f"/packages/{PKG}/dir%2Fbig.bin", 400),
    (f"/packages/{PKG}/dir\\big.bin", 400),
    (f"/packages/{PKG}/dir%5cbig.bin", 400),
    (f"/packages/{PKG}/small.bin%00.txt", 400),
    (f"/packages/{PKG}/./small.bin", 400),
    (f"/packages/{PKG}//small.bin", 400),
    (f"/packages/{PKG}/%ff.bin", 400),
    (f"/packages/{PKG}/a%0ab", 400),
    (f"/packages/{PKG}/", 404),
    (f"/packages/{PKG}", 404),
    ("/packages/../etc/passwd", 404),
    ("/packages/%2e%2e/etc/passwd", 404),
    ("/packages/.complete/" + PKG, 404),
    ("/etc/passwd", 404),
    ("/", 404),
])
def test_path_attacks_are_refused(relay, path, code):
    response = relay.get(path, token())
    assert response.code == code, path
    assert SMALL not in response.body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_other_methods_are_405(relay, method):
    response = relay.get(f"/packages/{PKG}/small.bin", token(), method=method)
    assert_refused(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "GET, HEAD"


def test_a_request_target_longer_than_the_limit_is_414(relay):
    response = relay.get(f"/packages/{PKG}/small.bin?pad=" + "a" * web.MAX_URI_BYTES, token())
    assert response.code == 414


def test_a_request_body_is_dropped_not_spooled(relay):
    raw = (f"POST /packages/{PKG}/small.bin HTTP/1.1\r\nHost: r\r\nContent-Length: 300000\r\n"
           "\r\n").encode() + b"z" * 300000
    response, channel, _ = relay.send(raw)
    assert response.code == 405


# -- logging -------------------------------------------------------------------------------

def test_each_refusal_is_logged_once_per_client_and_reason(relay):
    for _ in range(5):
        relay.get(f"/packages/{PKG}/small.bin")
    relay.get(f"/packages/{PKG}/small.bin", host="10.0.0.6")
    relay.get(f"/packages/{PKG}/small.bin", "garbage")
    lines = relay.refusals()
    assert len(lines) == 3
    assert {e["sender"].split(":")[0] for e in lines} == {"10.0.0.5", "10.0.0.6"}
    assert all("garbage" not in repr(e) for e in lines)  # never the presented token
    relay.clock.advance(61)
    relay.get(f"/packages/{PKG}/small.bin")
    assert "(+4 similar since)" in relay.refusals()[-1]["more"]


# -- limits and stalls ----------------------------------------------------------------------

def start_stalled_download(relay, host="10.0.0.5", port=40000):
    channel, transport = relay.connect(host=host, port=port, transport_class=PausingTransport)
    transport.full = True
    channel.dataReceived(f"GET /packages/{PKG}/dir/big.bin HTTP/1.1\r\nHost: r\r\n"
                         f"Authorization: Bearer {token()}\r\n\r\n".encode())
    return channel, transport


def test_a_paused_download_resumes_when_the_client_reads_again(relay):
    channel, transport = start_stalled_download(relay)
    assert relay.slots.active == 1
    assert len(transport.value()) < BIG_SIZE
    transport.full = False
    transport.producer.resumeProducing()
    assert Response(transport.value()).body == file_bytes(relay, "dir/big.bin")
    assert relay.slots.active == 0


def test_a_client_that_stops_reading_is_cut_after_the_idle_timeout(relay):
    channel, transport = start_stalled_download(relay)
    relay.clock.advance(59)
    assert not transport.disconnecting
    relay.clock.advance(2)
    assert transport.disconnecting and relay.slots.active == 0


def test_a_download_that_keeps_moving_is_not_cut(relay):
    channel, transport = start_stalled_download(relay)
    for _ in range(2):
        relay.clock.advance(50)
        transport.producer.resumeProducing()  # the client read a chunk
    assert not transport.disconnecting


def test_a_lost_connection_frees_the_slot_and_closes_the_file(relay):
    before = len(os.listdir("/proc/self/fd"))
    channel, transport = start_stalled_download(relay)
    channel.connectionLost(ConnectionError("gone"))
    assert relay.slots.active == 0
    assert len(os.listdir("/proc/self/fd")) == before


def test_per_client_limit_gives_503_with_retry_after(tmp_path):
    relay = Relay(tmp_path / "p", per_client=1)
    write_package(relay.root, PKG, {"dir/big.bin": BIG_SIZE, "small.bin": SMALL})
    start_stalled_download(relay)
    busy = relay.get(f"/packages/{PKG}/small.bin", token())
    assert_refused(busy, 503, "client-busy")
    assert busy.headers["retry-after"] == str(web.RETRY_AFTER_SECONDS)
    assert relay.get(f"/packages/{PKG}/small.bin", token(), host="10.0.0.9").code == 200
    assert relay.get(f"/packages/{PKG}/small.bin", token(), method="HEAD").code == 200


def test_total_limit_gives_503_and_frees_when_a_download_ends(tmp_path):
    relay = Relay(tmp_path / "p", total=1)
    write_package(relay.root, PKG, {"dir/big.bin": BIG_SIZE, "small.bin": SMALL})
    channel, transport = start_stalled_download(relay)
    assert_refused(relay.get(f"/packages/{PKG}/small.bin", token(), host="10.0.0.9"), 503,
                   "relay-busy")
    transport.full = False
    transport.producer.resumeProducing()
    assert relay.get(f"/packages/{PKG}/small.bin", token(), host="10.0.0.9").code == 200


def test_keep_alive_serves_several_requests_on_one_connection(relay):
    request = (f"GET /packages/{PKG}/one.bin HTTP/1.1\r\nHost: r\r\n"
               f"Authorization: Bearer {token()}\r\n\r\n").encode()
    response, channel, transport = relay.send(request * 3)
    assert transport.value().count(b"HTTP/1.1 200 OK") == 3
    assert relay.slots.active == 0
