"""The agent's package download: whole, resumed, refused when it lies about itself.

A real twisted.web server on 127.0.0.1:0 serves the files (with Range support)."""

import hashlib
import os
import shutil
import tempfile

from twisted.internet import defer, reactor
from twisted.trial import unittest
from twisted.web import pages, resource, server, static

from medulla_agent.download import Downloader, HashError, TransferError

BODY = os.urandom(300_000)
SHA = hashlib.sha256(BODY).hexdigest()


class Tokened(resource.Resource):
    """Serves `folder` only to the right bearer token; records Range headers seen."""

    isLeaf = False

    def __init__(self, folder):
        super().__init__()
        self.files = static.File(folder)
        self.ranges = []

    def getChild(self, name, request):
        if request.getHeader(b"authorization") != b"Bearer good-token":
            return pages.errorPage(401, "no", "no")
        self.ranges.append(request.getHeader(b"range"))
        return self.files.getChild(name, request)


class Lying(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"x" * 5000  # more than the declared size


class DownloadTests(unittest.TestCase):
    def setUp(self):
        # Not trial's mktemp(): that writes into the current folder, i.e. the checkout.
        self.folder = tempfile.mkdtemp(prefix="medulla-dl-")
        self.addCleanup(shutil.rmtree, self.folder, True)
        with open(os.path.join(self.folder, "pkg.bin"), "wb") as f:
            f.write(BODY)
        self.root = Tokened(self.folder)
        self.root.putChild(b"lying", Lying())
        self.port = reactor.listenTCP(0, server.Site(self.root), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = "http://127.0.0.1:%d/" % self.port.getHost().port
        self.dest = os.path.join(self.folder, "downloaded.bin")
        self.downloader = Downloader(reactor, timeout=10)

    @defer.inlineCallbacks
    def test_whole_file_is_fetched_and_verified(self):
        yield self.downloader.fetch(self.url + "pkg.bin", "good-token", self.dest,
                                    len(BODY), SHA)
        with open(self.dest, "rb") as f:
            self.assertEqual(f.read(), BODY)
        self.assertEqual(self.root.ranges, [None])

    @defer.inlineCallbacks
    def test_a_cut_download_resumes_where_it_stopped(self):
        with open(self.dest, "wb") as f:
            f.write(BODY[:123_456])
        yield self.downloader.fetch(self.url + "pkg.bin", "good-token", self.dest,
                                    len(BODY), SHA)
        self.assertEqual(self.root.ranges, [b"bytes=123456-"])
        with open(self.dest, "rb") as f:
            self.assertEqual(f.read(), BODY)

    @defer.inlineCallbacks
    def test_a_wrong_checksum_is_refused_and_the_file_removed(self):
        with self.assertRaises(HashError):
            yield self.downloader.fetch(self.url + "pkg.bin", "good-token", self.dest,
                                        len(BODY), "0" * 64)
        self.assertFalse(os.path.exists(self.dest))

    @defer.inlineCallbacks
    def test_a_relay_sending_more_than_declared_is_cut_off(self):
        with self.assertRaises(TransferError):
            yield self.downloader.fetch(self.url + "lying", "good-token", self.dest, 100,
                                        SHA)

    @defer.inlineCallbacks
    def test_a_refused_token_is_a_transfer_failure(self):
        with self.assertRaises(TransferError) as ctx:
            yield self.downloader.fetch(self.url + "pkg.bin", "bad-token", self.dest,
                                        len(BODY), SHA)
        self.assertIn("401", str(ctx.exception))

    @defer.inlineCallbacks
    def test_an_unreachable_relay_is_a_transfer_failure(self):
        with self.assertRaises(TransferError):
            yield self.downloader.fetch("http://127.0.0.1:9/x", "good-token", self.dest, 1,
                                        SHA)

    @defer.inlineCallbacks
    def test_fetch_bytes_is_bounded(self):
        data = yield self.downloader.fetch_bytes(self.url + "pkg.bin", "good-token",
                                                 len(BODY))
        self.assertEqual(data, BODY)
        with self.assertRaises(TransferError):
            yield self.downloader.fetch_bytes(self.url + "pkg.bin", "good-token", 1000)
