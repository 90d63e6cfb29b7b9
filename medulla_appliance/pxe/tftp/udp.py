"""The UDP port of one transfer: bound beside the listener, connected to the client.

Twisted's ``udp.Port`` would do, but it logs two lines per port ("... starting on N",
"(UDP Port N Closed)"), one transfer per port makes that two journal lines per file a
machine boots, and its read loop takes up to 256 KiB of 4-byte ACKs (65,536 of them) in
one go, starving other transfers' timers. This is the small part of it we need: a
connected socket handed to the reactor as an ``IReadDescriptor``, reading at most
``READS_PER_WAKEUP`` datagrams before letting others run. Under the asyncio reactor that
``core.runtime`` installs, the socket is registered with the asyncio loop itself (same
loop, same thread): that skips Twisted's per-wakeup logging context, about a tenth of a
lock-step round trip on loopback. Under any other reactor it is an ordinary reader.

A window of DATA (RFC 7440) goes out in one system call where Linux allows it: UDP GSO
(``UDP_SEGMENT``) cuts one buffer into datagrams of one size, the last one shorter, which
is exactly a window's shape. Each datagram on the wire is the same as with one ``send``
per block, at about a third of the cost. Where the kernel or the card refuses it, ports
fall back to one ``send`` per datagram for good; where only the size is refused (blocks
larger than the MTU), that transfer does.
"""

import asyncio
import errno
import socket
import struct
import sys

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

READS_PER_WAKEUP = 64
MAX_DATAGRAM = 65536  # an ACK is 4 bytes; a bigger datagram is read whole, then ignored
UDP_SEGMENT = getattr(socket, "UDP_SEGMENT", 103)  # Linux 4.18+
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000  # under the 65,507 bytes of one IPv4 UDP payload
# The kernel or the card cannot segment at all: no port tries again.
_GSO_UNSUPPORTED = (errno.EIO, errno.ENOPROTOOPT, errno.EOPNOTSUPP)
# This size cannot be segmented here (a block bigger than the path's MTU: GSO never makes
# IP fragments, a plain send does): this port sends one by one, the others still try.
_GSO_NOT_THIS_SIZE = (errno.EINVAL, errno.EMSGSIZE)


@implementer(IReadDescriptor)
class TransferPort:
    """A nonblocking UDP socket connected to ``peer``; datagrams go to ``protocol``.

    ``protocol`` gets ``datagramReceived(data)``, ``connectionRefused()`` (the client's
    port is closed: ICMP port unreachable) and ``portLost(reason)`` (the reactor dropped
    the port). ``send`` raises what ``socket.send`` raises.
    """

    log = Logger()
    gso = sys.platform.startswith("linux")  # set to False (for all ports) at a refusal

    def __init__(self, reactor, protocol, interface: str, peer: tuple):
        family = socket.AF_INET6 if ":" in interface else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((interface, 0))
            sock.connect(peer)
        except BaseException:
            sock.close()
            raise
        self.reactor = reactor
        self.protocol = protocol
        self.socket = sock
        self.send = sock.send
        self._fd = sock.fileno()
        self._loop = None
        self.closed = False

    def start(self) -> None:
        self._loop = _running_asyncio_loop(self.reactor)
        if self._loop is None:
            self.reactor.addReader(self)
        else:
            self._loop.add_reader(self._fd, self._read_ready)

    def _read_ready(self):
        # asyncio would log an exception through stdlib logging: end the transfer instead.
        try:
            self.doRead()
        except Exception:
            self.log.failure("transfer port read failed")
            self.connectionLost(Failure())

    def local_address(self) -> tuple:
        return self.socket.getsockname()

    def fileno(self):
        return self._fd

    def logPrefix(self):
        return "TFTP transfer"

    def doRead(self):
        recv, protocol = self.socket.recv, self.protocol
        for _ in range(READS_PER_WAKEUP):
            if self.closed:
                return None
            try:
                data = recv(MAX_DATAGRAM)
            except BlockingIOError:
                return None
            except ConnectionRefusedError:
                protocol.connectionRefused()
                return None
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.ENOBUFS, errno.ENOMEM):
                    return None
                raise
            protocol.datagramReceived(data)
        return None

    def send_window(self, datagrams) -> None:
        """Send several datagrams, all of one size but the last (a TFTP window)."""
        size = len(datagrams[0])
        step = min(GSO_MAX_SEGMENTS, GSO_MAX_BYTES // size)
        if not self.gso or step < 2 or len(datagrams[-1]) > size or any(
                len(d) != size for d in datagrams[1:-1]):
            for datagram in datagrams:
                self.send(datagram)
            return
        control = [(socket.SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))]
        for start in range(0, len(datagrams), step):
            group = datagrams[start:start + step]
            if len(group) == 1:
                self.send(group[0])
                continue
            try:
                self.socket.sendmsg(group, control)
            except OSError as exc:
                if exc.errno in _GSO_UNSUPPORTED:
                    TransferPort.gso = False
                    self.log.info("UDP GSO refused ({error}): sending one datagram per "
                                  "call", error=exc.strerror)
                elif exc.errno in _GSO_NOT_THIS_SIZE:
                    self.gso = False
                else:
                    raise
                for datagram in datagrams[start:]:
                    self.send(datagram)
                return

    def connectionLost(self, reason):
        # The reactor calls this when doRead raised or at shutdown: the transfer is over.
        if not self.closed:
            self.close()
            self.protocol.portLost(reason)

    def close(self) -> None:
        """Stop reading and close the socket; safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        if self._loop is None:
            self.reactor.removeReader(self)
        else:
            self._loop.remove_reader(self._fd)
        self.socket.close()


def _running_asyncio_loop(reactor):
    """The asyncio loop ``reactor`` runs on, when it is Twisted's asyncio reactor, running."""
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
