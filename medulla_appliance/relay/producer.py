"""Streams a byte range of an open file into an HTTP request.

Twisted's ``static`` producers read 64 KiB per call through a file object and, as pull
producers, go through a cooperator. This one is a push producer that the transport resumes
each time it has drained its buffer, and it moves the bytes in one of two ways:

- **sendfile**, on a plain TCP transport whose buffer is empty: ``os.sendfile`` from the
  file to the socket until the socket is full, so the bytes never enter Python (nginx does
  the same). Then one small piece goes through ``request.write``, so that the transport
  tells us, by resuming us, when the socket can take more. Profiling showed two thirds of
  the copy path's CPU in the page-cache and socket copies that this avoids.
- **copy**, for TLS, for tests over in-memory transports, or with sendfile turned off:
  ``os.pread`` of ``CHUNK_BYTES`` handed to ``request.write`` while the buffer is empty, so
  Twisted sends it without joining buffers.

Reads from local disk are synchronous, as in ``FileBodyProducer``: on a relay's warm files
they cost a page-cache copy, not a wait. A download that makes no progress for
``stall_timeout`` seconds (the client stopped reading) is aborted: Twisted's HTTP idle
timeout is off while a response is written.
"""

from __future__ import annotations

import os

from twisted.internet import defer, tcp
from twisted.internet.interfaces import IPushProducer, IReactorTime
from zope.interface import implementer

#: Bytes read and written per step on the copy path; with the transport's own 64 KiB
#: buffer, about what one connection holds in memory (1 MiB saved ~10% CPU, at 4x memory).
CHUNK_BYTES = 256 * 1024
#: Bytes one send() call may take (Twisted's default is 128 KiB): fewer trips per MiB.
SEND_LIMIT_BYTES = CHUNK_BYTES
#: The piece written through the transport when sendfile found the socket full: just over
#: the transport's buffer size, so the transport pauses us and resumes us once it is sent.
WAKE_UP_BYTES = 64 * 1024 + 1
#: Bytes sent with sendfile() per turn of one connection (nginx's sendfile_max_chunk): a
#: fast client must not hold the event loop while hundreds of others wait.
SENDFILE_BYTES = 2 * 1024 * 1024


class StalledError(Exception):
    """The client read nothing for the stall timeout."""


class Aborted(Exception):
    """The connection went away before the last byte, or the file shrank."""


def tune_transport(transport) -> None:
    """Let ``transport`` (TCP, or TLS over TCP) send bigger pieces per send() call."""
    while transport is not None:
        if hasattr(transport, "SEND_LIMIT"):
            transport.SEND_LIMIT = max(transport.SEND_LIMIT, SEND_LIMIT_BYTES)
            return
        transport = getattr(transport, "transport", None)


def _sendfile_socket(transport):
    """The plain TCP transport we may sendfile() to, or None (TLS, in-memory, other)."""
    if isinstance(transport, tcp.Connection) and getattr(transport, "TLS", False) is False:
        return transport
    return None


def _buffer_empty(transport) -> bool:
    # Nothing queued in Twisted's buffers: bytes sent now cannot overtake earlier ones.
    return len(transport.dataBuffer) == transport.offset and not transport._tempDataLen


@implementer(IPushProducer)
class FileRangeProducer:
    """Writes ``length`` bytes of ``fd`` from ``offset`` to ``request``, then finishes it.

    Owns ``fd`` (closes it). ``start()`` returns a Deferred fired with the byte count when
    the last byte was handed to the kernel or the transport, or failed with Aborted or
    StalledError.
    """

    def __init__(self, request, fd: int, offset: int, length: int, *, clock: IReactorTime,
                 stall_timeout: float, sendfile: bool = True, chunk: int = CHUNK_BYTES):
        self.request, self.fd = request, fd
        self.offset, self.remaining, self.chunk = offset, length, chunk
        self.sent = 0
        self._clock, self._stall_timeout = clock, stall_timeout
        self._want_sendfile = sendfile
        self._tcp = None
        self._paused = False
        self._producing = False
        self._progress_at = clock.seconds()
        self._watchdog = None
        self.done: defer.Deferred = defer.Deferred()

    def start(self) -> defer.Deferred:
        transport = self.request.channel.transport if self.request.channel else None
        tune_transport(transport)
        if self._want_sendfile:
            self._tcp = _sendfile_socket(transport)
        self.request.write(b"")  # the status line and headers, before any sendfile()
        self.request.registerProducer(self, True)
        self._watchdog = self._clock.callLater(self._stall_timeout, self._check_stall)
        self.resumeProducing()
        return self.done

    # -- IPushProducer ---------------------------------------------------------------------

    def resumeProducing(self):
        self._paused = False
        if self._producing or self.request is None:
            return  # re-entered from a write below
        self._producing = True
        try:
            piece = self.chunk
            if self._tcp is not None and self.remaining and _buffer_empty(self._tcp):
                self._sendfile()
                piece = WAKE_UP_BYTES
            while not self._paused and self.request is not None and self.remaining:
                data = os.pread(self.fd, min(piece, self.remaining), self.offset)
                if not data:
                    raise Aborted("the file is shorter than announced")
                self._advance(len(data))
                self.request.write(data)
        except Aborted as exc:
            self._abort(exc)
            return
        except OSError as exc:
            self._abort(Aborted(f"read or send failed: {exc.strerror or exc}"))
            return
        finally:
            self._producing = False
        if self.request is not None and not self.remaining:
            self._finish()

    def pauseProducing(self):
        self._paused = True

    def stopProducing(self):
        """The connection is gone."""
        self._end(Aborted("the connection was lost after %d bytes" % self.sent))

    def _sendfile(self):
        socket_fd = self._tcp.fileno()
        turn = min(self.remaining, SENDFILE_BYTES)
        while turn:
            try:
                sent = os.sendfile(socket_fd, self.fd, self.offset, turn)
            except BlockingIOError:
                return  # the socket is full
            if not sent:
                raise Aborted("the file is shorter than announced")
            self._advance(sent)
            turn -= sent

    def _advance(self, count: int):
        self.offset += count
        self.remaining -= count
        self.sent += count
        self._progress_at = self._clock.seconds()

    # -- ending ------------------------------------------------------------------------------

    def _finish(self):
        request = self.request
        request.unregisterProducer()
        request.finish()
        self._end(None)

    def _abort(self, reason: Exception):
        request = self.request
        self._end(reason)
        if request is not None and request.channel is not None:
            request.unregisterProducer()
            request.channel.transport.abortConnection()

    def _end(self, error: Exception | None):
        if self.request is None:
            return
        self.request = None
        self._tcp = None
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        os.close(self.fd)
        if error is None:
            self.done.callback(self.sent)
        else:
            self.done.errback(error)

    def _check_stall(self):
        self._watchdog = None
        if self.request is None:
            return
        idle = self._clock.seconds() - self._progress_at
        if idle >= self._stall_timeout:
            self._abort(StalledError("no progress for %.0f s after %d bytes"
                                     % (idle, self.sent)))
            return
        self._watchdog = self._clock.callLater(self._stall_timeout - idle, self._check_stall)
