"""How many downloads run at once, in all and per client address."""

from __future__ import annotations


class Busy(Exception):
    """No download slot: ``reason`` is ``relay-busy`` or ``client-busy``."""

    def __init__(self, reason: str, message: str):
        super().__init__(reason, message)
        self.reason, self.message = reason, message


class DownloadSlots:
    """Counts running downloads; ``acquire`` raises Busy above either limit."""

    def __init__(self, total: int, per_client: int):
        self.total, self.per_client = total, per_client
        self.active = 0
        self._by_client: dict[str, int] = {}

    def set_limits(self, total: int, per_client: int) -> None:
        """New limits (SIGHUP); running downloads above them finish normally."""
        self.total, self.per_client = total, per_client

    @property
    def clients(self) -> int:
        return len(self._by_client)

    def acquire(self, client: str) -> None:
        if self.active >= self.total:
            raise Busy("relay-busy", f"{self.active} downloads running (max_downloads)")
        running = self._by_client.get(client, 0)
        if running >= self.per_client:
            raise Busy("client-busy",
                       f"{running} downloads running for this client (max_downloads_per_client)")
        self.active += 1
        self._by_client[client] = running + 1

    def release(self, client: str) -> None:
        running = self._by_client.get(client, 0)
        if running <= 0:
            raise RuntimeError(f"no download to release for {client}")
        self.active -= 1
        if running == 1:
            del self._by_client[client]
        else:
            self._by_client[client] = running - 1
