"""A TCP forwarder on loopback that can freeze: while frozen it forwards nothing and
closes nothing, as when a cable is pulled or a NAT forgets a connection; nobody gets a
FIN or an RST. Used to test that silent deaths are noticed on both sides."""

import selectors
import socket
import threading

from medulla_appliance.testing.ports import LOOPBACK

CHUNK = 65536


class FreezableProxy:
    """Listens on 127.0.0.1:`port`, forwards each connection to `target_port`."""

    def __init__(self, target_port):
        self.target = (LOOPBACK, target_port)
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.frozen = threading.Event()
        self._stop = threading.Event()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.listener, selectors.EVENT_READ, None)
        self._peers = {}
        self._thread = threading.Thread(target=self._run, name="proxy", daemon=True)
        self._thread.start()

    def freeze(self):
        self.frozen.set()

    def thaw(self):
        self.frozen.clear()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        for sock in list(self._peers) + [self.listener]:
            sock.close()
        self._selector.close()

    def _run(self):
        while not self._stop.is_set():
            for key, _ in self._selector.select(timeout=0.05):
                if self.frozen.is_set():
                    continue  # nothing moves, nothing closes
                if key.data is None:
                    self._accept()
                else:
                    self._forward(key.fileobj)
            if self.frozen.is_set():
                self._stop.wait(0.05)

    def _accept(self):
        client, _ = self.listener.accept()
        try:
            server = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        for a, b in ((client, server), (server, client)):
            a.setblocking(False)
            self._peers[a] = b
            self._selector.register(a, selectors.EVENT_READ, True)

    def _forward(self, sock):
        peer = self._peers.get(sock)
        try:
            data = sock.recv(CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data and peer is not None:
            try:
                peer.setblocking(True)
                peer.sendall(data)
                peer.setblocking(False)
                return
            except OSError:
                pass
        for s in (sock, peer):
            if s is not None and s in self._peers:
                self._selector.unregister(s)
                del self._peers[s]
                s.close()
