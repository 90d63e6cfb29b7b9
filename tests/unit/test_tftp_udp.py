"""The transfer port's sending and reading loops, over a fake socket (no network)."""

import asyncio
import errno
import os
import socket
import struct

import pytest

from medulla_appliance.pxe.tftp import udp
from medulla_appliance.pxe.tftp.udp import GSO_MAX_SEGMENTS, UDP_SEGMENT, TransferPort


class FakeSocket:
    def __init__(self, incoming=(), refuse_gso=None):
        self.calls = []
        self.incoming = list(incoming)
        self.refuse_gso = refuse_gso
        self.closed = False

    def send(self, data):
        self.calls.append(("send", data))

    def sendmsg(self, buffers, control):
        if self.refuse_gso:
            raise OSError(self.refuse_gso, "refused")
        [(level, kind, value)] = control
        assert (level, kind) == (socket.SOL_UDP, UDP_SEGMENT)
        self.calls.append(("gso", struct.unpack("=H", value)[0], list(buffers)))

    def recv(self, size):
        if not self.incoming:
            raise BlockingIOError(errno.EAGAIN, "again")
        item = self.incoming.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def close(self):
        self.closed = True


class FakeReactor:
    def __init__(self):
        self.readers = set()

    def addReader(self, reader):
        self.readers.add(reader)

    def removeReader(self, reader):
        self.readers.discard(reader)


class Recorder:
    def __init__(self):
        self.datagrams, self.refused, self.lost = [], 0, []

    def datagramReceived(self, data):
        self.datagrams.append(data)

    def connectionRefused(self):
        self.refused += 1

    def portLost(self, reason):
        self.lost.append(reason)


def port(sock, protocol=None):
    p = TransferPort.__new__(TransferPort)
    p.reactor, p.protocol, p.socket = FakeReactor(), protocol or Recorder(), sock
    p.send, p._fd, p.closed, p._loop = sock.send, 7, False, None
    return p


@pytest.fixture(autouse=True)
def gso_on(monkeypatch):
    monkeypatch.setattr(TransferPort, "gso", True)


def window(count, size=1472, last=None):
    blocks = [bytes([n]) * size for n in range(count)]
    if last is not None:
        blocks[-1] = blocks[-1][:last]
    return blocks


def test_a_window_goes_out_in_one_gso_call():
    sock = FakeSocket()
    datagrams = window(16, last=100)
    port(sock).send_window(datagrams)
    assert sock.calls == [("gso", 1472, datagrams)]


def test_big_windows_are_cut_under_the_segment_and_byte_limits():
    sock = FakeSocket()
    port(sock).send_window(window(100, size=516))
    sizes = [len(call[2]) for call in sock.calls]
    assert sizes == [GSO_MAX_SEGMENTS, 100 - GSO_MAX_SEGMENTS]
    sock = FakeSocket()
    port(sock).send_window(window(5, size=16004))      # 4 per call fit in 65,000 bytes
    assert [c[0] for c in sock.calls] == ["gso", "send"]


def test_uneven_datagrams_are_sent_one_by_one():
    sock = FakeSocket()
    datagrams = [b"a" * 10, b"b" * 9, b"c" * 10]
    port(sock).send_window(datagrams)
    assert sock.calls == [("send", d) for d in datagrams]


def test_a_kernel_refusing_gso_switches_every_port_to_plain_sends():
    sock = FakeSocket(refuse_gso=errno.EIO)
    datagrams = window(3)
    port(sock).send_window(datagrams)
    assert sock.calls == [("send", d) for d in datagrams]
    assert TransferPort.gso is False
    other = FakeSocket()
    port(other).send_window(datagrams)
    assert other.calls == [("send", d) for d in datagrams]


def test_a_size_the_path_cannot_segment_falls_back_for_that_port_only():
    sock = FakeSocket(refuse_gso=errno.EINVAL)     # e.g. IPv6 blocks bigger than the MTU
    datagrams = window(100, size=516)
    p = port(sock)
    p.send_window(datagrams)
    assert sock.calls == [("send", d) for d in datagrams]   # every one, once
    assert p.gso is False and TransferPort.gso is True
    other = FakeSocket()
    port(other).send_window(window(3))
    assert other.calls[0][0] == "gso"


def test_other_send_errors_reach_the_caller():
    with pytest.raises(OSError):
        port(FakeSocket(refuse_gso=errno.EPERM)).send_window(window(3))


def test_reads_are_bounded_per_wakeup():
    sock = FakeSocket([b"\x00\x04\x00\x01"] * (udp.READS_PER_WAKEUP + 5))
    p = port(sock)
    p.doRead()
    assert len(p.protocol.datagrams) == udp.READS_PER_WAKEUP
    p.doRead()
    assert len(p.protocol.datagrams) == udp.READS_PER_WAKEUP + 5


def test_port_unreachable_is_reported():
    p = port(FakeSocket([ConnectionRefusedError(errno.ECONNREFUSED, "refused")]))
    p.doRead()
    assert p.protocol.refused == 1


def test_close_is_idempotent_and_a_reactor_drop_tells_the_protocol():
    sock = FakeSocket()
    p = port(sock)
    p.start()
    assert p in p.reactor.readers
    p.connectionLost(Exception("gone"))
    assert sock.closed and p.reactor.readers == set() and len(p.protocol.lost) == 1
    p.close()
    p.connectionLost(Exception("again"))
    assert len(p.protocol.lost) == 1


def test_not_under_asyncio_the_port_is_a_plain_reactor_reader():
    assert udp._running_asyncio_loop(FakeReactor()) is None


def test_under_the_asyncio_reactor_the_port_reads_from_the_asyncio_loop():
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    loop = asyncio.new_event_loop()
    reactor = AsyncioSelectorReactor(loop)
    readable, writer = os.pipe()         # stands for the socket's readiness (no network)
    sock = FakeSocket([b"\x00\x04\x00\x01"])
    p = port(sock)
    p.reactor, p._fd = reactor, readable

    seen = {}

    async def exchange():
        p.start()
        seen["via_twisted"] = p in reactor.getReaders()
        seen["loop"] = p._loop
        os.write(writer, b"x")
        for _ in range(100):
            await asyncio.sleep(0)
            if p.protocol.datagrams:
                break
        p.close()

    try:
        loop.run_until_complete(exchange())
        assert p.protocol.datagrams == [b"\x00\x04\x00\x01"]
        assert seen == {"via_twisted": False, "loop": loop}  # the asyncio loop itself
        assert p.closed and sock.closed
    finally:
        os.close(readable)
        os.close(writer)
        loop.close()
