"""The admin API's test harness: a real Site over in-memory transports, a registry double
following the Registry's contract, and the fixtures every API test module uses."""

import json

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from medulla_appliance.master import api

TOKEN = "k9V2-right-token-Qm3x"
NOW = 1763820123.5
PEER = IPv4Address("TCP", "127.0.0.1", 40000)


def machine(hostname, uuid, online=True, **extra):
    m = {"uuid": uuid, "hostname": hostname, "jid": f"{hostname}.k3x@medulla.test/5254",
         "macs": ["52:54:00:aa:bb:cc"], "ips": ["192.0.2.10"],
         "os": "Debian GNU/Linux 12 (bookworm)", "agent_version": "0.1.0",
         "inventory_tag": "", "relay": "master", "online": online,
         "last_seen": NOW - 12, "enrolled_at": NOW - 10000, "key_fingerprint": "SHA256:x"}
    m.update(extra)
    return m


class FakeRegistry:
    """The registry interface, recording calls; *pending* makes calls wait."""

    def __init__(self, machines=(), history=None):
        self.machines = list(machines)
        self.history = history or {}
        self.calls = []
        self.fail = None
        self.pending = None

    def _answer(self, value):
        if self.fail is not None:
            raise self.fail
        if self.pending is not None:
            return self.pending
        return defer.succeed(value)

    def list_machines(self, online=None):
        self.calls.append(("list_machines", online))
        return self._answer([m for m in self.machines if online is None or m["online"] is online])

    def find_machines(self, name):
        self.calls.append(("find_machines", name))
        return self._answer([m for m in self.machines
                             if name in (m["hostname"], m["uuid"], m["jid"])])

    def machine_history(self, uuid, limit):
        self.calls.append(("machine_history", uuid, limit))
        return self.history.get(uuid, [])[:limit]  # a plain value: the API wraps it

    def reset_key(self, uuid):
        self.calls.append(("reset_key", uuid))
        return self._answer(None)

    def status(self):
        self.calls.append(("status",))
        return self._answer({"version": "0.1.0", "xmpp": {"connected": True, "jid": "master@x/m"},
                             "machines": {"total": 3, "online": 2, "offline": 1},
                             "started_at": NOW - 3600})


class Response:
    def __init__(self, raw):
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.code = int(lines[0].split()[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower().decode()
            self.headers.setdefault(key, []).append(value.strip().decode())
        length = int(self.headers.get("content-length", ["0"])[0])
        self.raw_body = rest[:length]
        assert len(self.raw_body) == length

    @property
    def json(self):
        return json.loads(self.raw_body.decode("utf-8"))

    def header(self, name):
        return self.headers[name][0]


class Harness:
    def __init__(self, registry, **collaborators):
        self.registry = registry
        self.clock = Clock()
        self.clock.advance(NOW)
        self.site = api.make_api_site(registry, TOKEN, clock=self.clock, **collaborators)
        self.connections = []

    def send(self, method, target, token=TOKEN, headers=(), body=b""):
        proto = self.site.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        self.connections.append(proto)
        lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1:7080"]
        if token is not None:
            lines.append(f"Authorization: Bearer {token}")
        lines += list(headers)
        proto.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        for start in range(0, len(body), 1024):  # a body arrives in several reads
            proto.dataReceived(body[start:start + 1024])
        return proto, transport

    def get(self, target, **kwargs):
        return self.request("GET", target, **kwargs)

    def post(self, target, body=b"", headers=(), method="POST", **kwargs):
        headers = [f"Content-Length: {len(body)}", *headers]
        return self.request(method, target, headers=headers, body=body, **kwargs)

    def request(self, method, target, **kwargs):
        _, transport = self.send(method, target, **kwargs)
        return Response(transport.value())

    def close(self):
        for proto in self.connections:
            proto.connectionLost(Failure(ConnectionDone()))
        # Every idle timeout went with its connection.
        assert [c for c in self.clock.getDelayedCalls()
                if "_updateLogDateTime" not in repr(c.func)] == []
