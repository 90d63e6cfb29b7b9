"""A bare client-side XML stream, to probe XMPP servers without any XMPP library.

The harness uses it to know when a server really negotiates STARTTLS; tests use it to see
exactly what a server offers before and after TLS.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path
from xml.etree.ElementTree import Element, XMLPullParser

STREAMS_NS = "{http://etherx.jabber.org/streams}"
TLS_NS = "{urn:ietf:params:xml:ns:xmpp-tls}"
SASL_NS = "{urn:ietf:params:xml:ns:xmpp-sasl}"
CLIENT_NS = "{jabber:client}"
FEATURES = STREAMS_NS + "features"


class RawStream:
    """One client connection to ``host:port``, speaking raw XML to ``domain``.

    Every read has a deadline of ``timeout`` seconds from when the stream was created.
    """

    def __init__(self, port: int, domain: str, timeout: float = 5.0,
                 host: str = "127.0.0.1") -> None:
        self.domain = domain
        self.deadline = time.monotonic() + timeout
        self.sock: socket.socket = socket.create_connection((host, port), timeout=timeout)
        self._parser = XMLPullParser(events=("end",))

    def open(self) -> Element:
        """Send a stream header; return the server's ``<stream:features/>``."""
        self._parser = XMLPullParser(events=("end",))  # a new stream is a new document
        self.send(
            f"<?xml version='1.0'?><stream:stream to='{self.domain}' version='1.0' "
            "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>")
        return self.expect(FEATURES)

    def starttls(self, ca_path: Path | str) -> Element:
        """Negotiate TLS, verifying the server as ``domain`` against ``ca_path``.

        Returns the features of the stream restarted over TLS.
        """
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        self.expect(TLS_NS + "proceed")
        context = ssl.create_default_context(cafile=str(ca_path))
        self.sock = context.wrap_socket(self.sock, server_hostname=self.domain)
        return self.open()

    def send(self, data: str) -> None:
        self.sock.sendall(data.encode())

    def expect(self, *tags: str) -> Element:
        """Read until an element with one of ``tags`` (Clark notation) is complete."""
        while True:
            for _event, element in self._parser.read_events():
                if element.tag in tags:
                    return element
            self.sock.settimeout(max(0.01, self.deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"stream closed while waiting for {tags}")
            self._parser.feed(data)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawStream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def mechanisms(features: Element) -> list[str]:
    """The SASL mechanisms listed in a ``<stream:features/>`` element."""
    return [item.text or "" for item in features.iter(SASL_NS + "mechanism")]


def stream_features(port: int, domain: str, timeout: float = 5.0) -> Element:
    """The features a server offers on a plain (not yet encrypted) stream."""
    with RawStream(port, domain, timeout) as stream:
        return stream.open()


def check_starttls(port: int, domain: str, ca_path: Path | str, timeout: float = 5.0) -> None:
    """Raise unless the server negotiates STARTTLS with a certificate valid for ``domain``."""
    with RawStream(port, domain, timeout) as stream:
        if stream.open().find(TLS_NS + "starttls") is None:
            raise ConnectionError("the server does not offer STARTTLS")
        stream.starttls(ca_path)
