"""TFTP on Twisted: listening ports take read requests, each transfer gets its own port.

``TFTPServer`` is where requests become transfers or refusals: the one place a
``PacketError``, a ``BackendError`` or a ``TooManyTransfers`` turns into a TFTP ERROR and
one log line (``refused RRQ from HOST filename NAME: REASON (...)``). Every transfer runs
on a new UDP port (its RFC 1350 TID, ``udp.TransferPort``) on the listener's address,
connected to the client: the kernel then drops datagrams from any other address or port,
and ``send`` needs no address lookup per packet.
"""

import errno

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from . import packets
from .backend import BackendError, ClientInfo, check_name, netascii
from .limits import LineBudget, SessionLimits, TooManyTransfers
from .options import OptionLimits, negotiate
from .session import ReadSession, TransferTimedOut
from .udp import TransferPort

REFUSAL_LINES_PER_SECOND = 50
_UNSPECIFIED = ("", "::", "0.0.0.0")
_SEND_LATER = (errno.EAGAIN, errno.ENOBUFS)


def display_host(host: str) -> str:
    """An address as people write it: IPv4-mapped IPv6 (``::ffff:10.0.0.5``) as IPv4."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host


class TransferProtocol:
    """One read transfer on its own port; the hot path is ``datagramReceived``."""

    log = Logger()

    def __init__(self, server, key, request: bytes, filename: str, client: str):
        self.server = server
        self.key = key              # (host, port) as the listener saw it
        self.request = request      # the RRQ datagram, to recognise a retransmitted one
        self.filename = filename
        self.client = client        # display form of the client's address
        self.port = None
        self.session = None
        self.outcome = None
        self._clock = server.clock
        self._timer = None
        self._timer_at = 0.0
        self._started = 0.0

    def begin(self, port, session: ReadSession) -> None:
        """Send the first datagrams (OACK or DATA) and start the retransmission timer."""
        self.port = port
        self.session = session
        self._started = self._clock.seconds()
        try:
            first = session.start()
        except OSError as exc:
            self._fail_read(exc)
            return
        port.start()
        self._send(first)
        if self.outcome is None:
            self._arm()
            self._read_ahead()

    def datagramReceived(self, data):
        session = self.session
        if len(data) >= 4 and data[1] == packets.ACK_OP and data[0] == 0:
            try:
                out = session.receive_ack((data[2] << 8) | data[3])
            except OSError as exc:
                self._fail_read(exc)
                return
            if out:
                self._send(out)
                deadline = session.deadline  # None if the send ended the transfer
                if deadline is None:
                    return
                if deadline < self._timer_at:
                    self._arm()
                self._read_ahead()
            elif session.finished:
                self._finish("sent")
            return
        self._other_packet(data)

    def connectionRefused(self):
        # ICMP port unreachable: the client's TID is gone, nobody will ever ACK.
        self._finish("client gone", "its port is closed")

    def portLost(self, reason):
        self._finish("port lost", reason.getErrorMessage())

    def abort(self, why: str) -> None:
        """End the transfer now (server stopping, request superseded)."""
        self._finish("aborted", why)

    # -- inside ---------------------------------------------------------------------------

    def _other_packet(self, data):
        try:
            packet = packets.decode(data)
        except packets.PacketError:
            self.session.ignored_acks += 1
            return
        if isinstance(packet, packets.ERROR):
            self.session.receive_error(packet.code, packet.message)
            if self.session.options_refused:
                self._finish("options refused", packet.message)
            else:
                self._finish("client error", "error %d: %s" % (packet.code, packet.message))
        # Anything else on a transfer port (a stray DATA, a second RRQ) changes nothing.

    def _send(self, datagrams):
        try:
            if len(datagrams) == 1:
                self.port.send(datagrams[0])
            else:
                self.port.send_window(datagrams)
        except ConnectionRefusedError:
            self.connectionRefused()
        except OSError as exc:
            # A full socket buffer drops the rest of the window: the client's ACK for the
            # last block it got, or our timer, sends it again.
            if exc.errno not in _SEND_LATER:
                self._finish("send failed", exc.strerror or str(exc))

    def _arm(self):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        deadline = self.session.deadline
        self._timer_at = deadline
        self._timer = self._clock.callLater(max(0.0, deadline - self._clock.seconds()),
                                            self._tick)

    def _tick(self):
        # The deadline moves on every ACK without touching the timer; only here do we see
        # whether it really passed (cheaper than resetting a DelayedCall per packet).
        self._timer = None
        if self.outcome is not None:
            return
        try:
            out = self.session.on_timer()
        except TransferTimedOut as exc:
            self._finish("timed out", str(exc))
            return
        except OSError as exc:
            self._fail_read(exc)
            return
        if out:
            self._send(out)
        if self.outcome is None and self.session.deadline is not None:
            self._arm()

    def _read_ahead(self):
        # While the client digests what we just sent: the next ACK then only sends.
        try:
            self.session.read_ahead()
        except OSError as exc:
            self._fail_read(exc)

    def _fail_read(self, exc):
        self._send([packets.encode_error(packets.ERR_UNDEFINED, "read error")])
        self._finish("read error", exc.strerror or str(exc))

    def _finish(self, outcome: str, detail: str = "") -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.session.close()
        self.port.close()
        self.server.transfer_ended(self, outcome, detail,
                                   self._clock.seconds() - self._started)


class TFTPListener(DatagramProtocol):
    """A listening port (69): hands every datagram to the server with its own interface."""

    noisy = False

    def __init__(self, server, interface: str):
        self.server = server
        self.interface = interface

    def datagramReceived(self, data, addr):
        self.server.request_received(data, addr, self)


class TFTPServer:
    """Turns requests into transfers within the limits, or into refusals; knows them all."""

    log = Logger()

    def __init__(self, backend, *, reactor, max_sessions=256, max_sessions_per_client=8,
                 timeout=1.0, retries=5, verbose=False, option_limits=None,
                 open_port=TransferPort):
        self.backend = backend
        self.reactor = reactor
        self.open_port = open_port   # (reactor, protocol, interface, peer) -> port
        self.clock = reactor
        self.limits = SessionLimits(max_sessions, max_sessions_per_client)
        self.timeout = timeout
        self.retries = retries
        self.verbose = verbose
        self.option_limits = option_limits or OptionLimits()
        self.transfers = {}          # (host, port) -> TransferProtocol
        self.served = 0
        self.refused = 0
        self._refusal_lines = LineBudget(reactor, REFUSAL_LINES_PER_SECOND)

    def listen(self, port: int, interface: str):
        """Listen for requests on ``interface``:``port``; returns the Twisted port."""
        return self.reactor.listenUDP(port, TFTPListener(self, interface), interface=interface)

    def configure(self, *, max_sessions, max_sessions_per_client, timeout, retries, verbose,
                  option_limits):
        """New settings for the transfers that start from now on (SIGHUP)."""
        self.limits.max_total = max_sessions
        self.limits.max_per_client = max_sessions_per_client
        self.timeout, self.retries, self.verbose = timeout, retries, verbose
        self.option_limits = option_limits

    def stop(self) -> None:
        """Abort every running transfer."""
        for transfer in list(self.transfers.values()):
            transfer.abort("server stopping")

    # -- requests -------------------------------------------------------------------------

    def request_received(self, data: bytes, addr, listener: TFTPListener) -> None:
        client = display_host(addr[0])
        try:
            packet = packets.decode(data)
        except packets.PacketError as exc:
            if data[:2] != b"\x00\x05":  # never answer an ERROR, even a broken one
                self._refuse(listener, addr, client, "packet", exc.code, str(exc), "malformed")
            return
        if isinstance(packet, packets.RRQ):
            self._read_request(packet, data, addr, client, listener)
        elif isinstance(packet, packets.WRQ):
            self._refuse(listener, addr, client, "WRQ", packets.ERR_ACCESS,
                         "read-only server", "write-request", packet.filename)
        elif isinstance(packet, packets.ACK):
            # tftp-hpa's client acknowledges the ERROR that refused its request; an ACK
            # here never means anything, and answering it would only bounce errors.
            self.log.debug("ignored ACK from {client} on a listening port", client=client)
        elif not isinstance(packet, packets.ERROR):
            self._refuse(listener, addr, client, type(packet).__name__,
                         packets.ERR_UNKNOWN_TID, "no transfer on this port", "not-a-request")

    def _read_request(self, rrq, data, addr, client, listener):
        name = rrq.filename
        if self.verbose:
            # The line tftpd-hpa -v writes, so existing habits (grep 'RRQ from') still work.
            self.log.info("RRQ from {client} filename {filename}", client=client,
                          filename=name)
        key = (addr[0], addr[1])
        running = self.transfers.get(key)
        if running is not None:
            if running.request == data and running.session.acked <= 0:
                return  # the client sent its RRQ again before our first reply reached it
            running.abort("the client sent a new request from the same port")
        if rrq.mode == "mail":
            self._refuse(listener, addr, client, "RRQ", packets.ERR_ILLEGAL_OP,
                         "mail mode is for writing", "mail-mode", name)
            return
        try:
            check_name(name)
            self.limits.acquire(client)
        except BackendError as exc:
            self._refuse(listener, addr, client, "RRQ", exc.code, exc.message, exc.reason, name)
            return
        except TooManyTransfers as exc:
            self._refuse(listener, addr, client, "RRQ", packets.ERR_UNDEFINED, str(exc),
                         "too-many-transfers", name)
            return
        try:
            self._start(rrq, data, key, client, listener)
        except BackendError as exc:
            self.limits.release(client)
            self._refuse(listener, addr, client, "RRQ", exc.code, exc.message, exc.reason, name)
        except OSError as exc:
            self.limits.release(client)
            self._refuse(listener, addr, client, "RRQ", packets.ERR_UNDEFINED,
                         "server cannot open a transfer port", "no-port", name)
            self.log.error("cannot open a transfer port: {error}", error=exc)

    def _start(self, rrq, data, key, client, listener):
        local = "" if listener.interface in _UNSPECIFIED else listener.interface
        source = self.backend.open_read(rrq.filename, ClientInfo(client, key[1], local))
        try:
            if rrq.mode == "netascii":
                source = netascii(source)
            agreed = negotiate(rrq.options, self.option_limits, source.size)
            oack = packets.OACK(agreed.oack_options).to_wire() if agreed.oack else None
            session = ReadSession(source, clock=self.clock, blksize=agreed.blksize,
                                  windowsize=agreed.windowsize,
                                  timeout=agreed.timeout or self.timeout,
                                  retries=self.retries, oack=oack)
            transfer = TransferProtocol(self, key, data, rrq.filename, client)
            port = self.open_port(self.reactor, transfer, listener.interface, key)
        except BaseException:
            source.close()
            raise
        self.transfers[key] = transfer
        if agreed.oack:
            self.log.debug("{client} {filename}: options {options}", client=client,
                           filename=rrq.filename, options=agreed.oack_options)
        transfer.begin(port, session)

    def transfer_ended(self, transfer, outcome: str, detail: str, seconds: float) -> None:
        if self.transfers.get(transfer.key) is transfer:
            del self.transfers[transfer.key]
        self.limits.release(transfer.client)
        session = transfer.session
        if outcome == "sent":
            self.served += 1
            log = self.log.info if self.verbose else self.log.debug
            log("sent {filename} to {client}: {size} bytes in {blocks} blocks of {blksize}, "
                "{seconds:.3f}s, {again} sent again", filename=transfer.filename,
                client=transfer.client, size=session.total_bytes, blocks=session.blocks_sent,
                blksize=session.blksize, seconds=seconds, again=session.retransmitted)
        elif outcome == "options refused":
            # Normal for PXE ROMs that ask for tsize, then ask again with the options they
            # want; the words are tftpd-hpa's, which the Medulla FAQ tells admins to look for.
            log = self.log.info if self.verbose else self.log.debug
            log("tftp: client does not accept options: {client} filename {filename} "
                "({detail})", client=transfer.client, filename=transfer.filename,
                detail=detail)
        else:
            self.log.info("transfer of {filename} to {client} ended: {outcome}: {detail}",
                          filename=transfer.filename, client=transfer.client,
                          outcome=outcome, detail=detail)

    def _refuse(self, listener, addr, client, what, code, message, reason, filename=None):
        """Answer ERROR ``code`` and log one line (within the refusal line budget)."""
        self.refused += 1
        try:
            listener.transport.write(packets.encode_error(code, message), addr)
        except OSError:
            pass  # the client's address is unreachable; the log line still says why
        allowed, suppressed = self._refusal_lines.take()
        if not allowed:
            return
        if suppressed:
            self.log.warn("{count} more refusals were not logged (over {limit} a second)",
                          count=suppressed, limit=REFUSAL_LINES_PER_SECOND)
        name = "" if filename is None else " filename %s" % filename
        self.log.warn("refused {what} from {client}{name}: {reason} ({message})", what=what,
                      client=client, name=name, reason=reason, message=message)
