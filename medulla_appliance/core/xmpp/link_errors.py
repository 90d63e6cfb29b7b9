"""Why a request of a server-side daemon to the master got no positive answer (raised by
:mod:`.link`, which re-exports them)."""


class LinkError(Exception):
    """A request that did not get a positive answer."""


class LinkDown(LinkError):
    """No XMPP session to the master right now."""


class LinkTimeout(LinkError):
    """The master did not answer in time."""


class LinkRefused(LinkError):
    """The master answered with a non-zero ``ret``; ``code``, ``error`` and ``data`` say
    why."""

    def __init__(self, code, data):
        self.code, self.data = code, data
        self.error = data.get("error", "") if isinstance(data, dict) else ""
        message = data.get("message", "") if isinstance(data, dict) else ""
        super().__init__(f"{code} {self.error}: {message}".rstrip(": "))
