"""Free ports on 127.0.0.1 for servers that tests start as subprocesses.

The kernel picks the port (bind to port 0); the socket is closed before the caller uses
the number, so another process could take it in between. On a test machine that race is
rare enough, and every server we start fails loudly when its port is taken.
"""

import socket

LOOPBACK = "127.0.0.1"


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def free_tcp_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return _free_port(socket.SOCK_STREAM)


def free_udp_port() -> int:
    """A UDP port on 127.0.0.1 that nothing is bound to right now."""
    return _free_port(socket.SOCK_DGRAM)
