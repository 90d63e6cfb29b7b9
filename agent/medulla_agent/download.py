"""Downloads a package file from the agent's relay: resumes with `Range` after a cut,
writes no more than the size the (signed) descriptor declares, and checks the SHA-256
before anything uses the file. Non-blocking: Twisted's HTTP client, hashing in a thread.
"""

import hashlib
import os

from twisted.internet import defer, protocol, ssl, threads
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, ResponseDone
from twisted.web.http_headers import Headers

HASH_CHUNK = 1024 * 1024


class TransferError(Exception):
    """The file could not be fetched (HTTP error, cut, oversize): `ABORT TRANSFER FAILED`."""


class HashError(Exception):
    """The file arrived but its SHA-256 is not the one announced: `ABORT HASH INVALID`."""


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _ToFile(protocol.Protocol):
    """Writes a response body to an open file, refusing to go past `limit` bytes."""

    def __init__(self, f, limit, done):
        self.f, self.limit, self.done = f, limit, done
        self.written = 0

    def dataReceived(self, data):
        if self.written + len(data) > self.limit:
            self.transport.stopProducing()
            if not self.done.called:
                self.done.errback(TransferError("the relay sent more than the declared size"))
            return
        self.f.write(data)
        self.written += len(data)

    def connectionLost(self, reason):
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(self.written)
        else:
            self.done.errback(TransferError("transfer cut: %s" % reason.getErrorMessage()))


class Downloader:
    """Fetches files over HTTP(S) with a bearer token; trusts only `ca_path` for HTTPS."""

    def __init__(self, reactor, ca_path=None, timeout=60.0):
        policy = BrowserLikePolicyForHTTPS()
        if ca_path:
            with open(ca_path, "rb") as f:
                policy = BrowserLikePolicyForHTTPS(trustRoot=ssl.Certificate.loadPEM(f.read()))
        self.agent = Agent(reactor, contextFactory=policy, connectTimeout=timeout)
        self.reactor, self.timeout = reactor, timeout

    @defer.inlineCallbacks
    def fetch(self, url, token, path, size, sha256):
        """Make `path` hold the file at `url` (`size` bytes, `sha256`), resuming a part."""
        have = os.path.getsize(path) if os.path.exists(path) else 0
        if have > size:
            os.unlink(path)
            have = 0
        if have < size or size == 0:
            yield self._get(url, token, path, have, size)
        actual = yield threads.deferToThread(sha256_of, path)
        if actual != sha256:
            os.unlink(path)
            raise HashError("%s: SHA-256 %s, expected %s" % (os.path.basename(path), actual,
                                                              sha256))

    @defer.inlineCallbacks
    def _get(self, url, token, path, have, size):
        headers = {b"Authorization": [b"Bearer " + token.encode("ascii")]}
        if have:
            headers[b"Range"] = [b"bytes=%d-" % have]
        try:
            d = self.agent.request(b"GET", url.encode("utf-8"), Headers(headers))
            d.addTimeout(self.timeout, self.reactor)
            response = yield d
        except Exception as e:
            raise TransferError("cannot reach the relay: %s" % e) from None
        if response.code == 206 and have:
            mode, start = "ab", have
        elif response.code == 200:
            mode, start = "wb", 0
        else:
            response.deliverBody(protocol.Protocol())  # discard
            raise TransferError("relay answered HTTP %d for %s" % (response.code, url))
        done = defer.Deferred()
        with open(path, mode) as f:
            response.deliverBody(_ToFile(f, size - start, done))
            written = yield done
        if start + written != size:
            raise TransferError("got %d of %d bytes" % (start + written, size))

    def fetch_bytes(self, url, token, limit):
        """The body of `url` in memory, at most `limit` bytes (the descriptor)."""
        return defer.ensureDeferred(self._fetch_bytes(url, token, limit))

    async def _fetch_bytes(self, url, token, limit):
        headers = Headers({b"Authorization": [b"Bearer " + token.encode("ascii")]})
        try:
            response = await self.agent.request(b"GET", url.encode("utf-8"), headers)
        except Exception as e:
            raise TransferError("cannot reach the relay: %s" % e) from None
        if response.code != 200:
            response.deliverBody(protocol.Protocol())
            raise TransferError("relay answered HTTP %d for %s" % (response.code, url))
        chunks = _Collect(limit)
        response.deliverBody(chunks)
        return await chunks.done


class _Collect(protocol.Protocol):
    def __init__(self, limit):
        self.limit, self.parts, self.size = limit, [], 0
        self.done = defer.Deferred()

    def dataReceived(self, data):
        self.size += len(data)
        if self.size > self.limit:
            self.transport.stopProducing()
            if not self.done.called:
                self.done.errback(TransferError("response larger than %d bytes" % self.limit))
            return
        self.parts.append(data)

    def connectionLost(self, reason):
        if self.done.called:
            return
        if reason.check(ResponseDone):
            self.done.callback(b"".join(self.parts))
        else:
            self.done.errback(TransferError("transfer cut: %s" % reason.getErrorMessage()))
