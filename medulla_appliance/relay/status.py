"""``relay.status``: medulla-relay tells the master its load every ``[status] interval``
while its link is up (and at once when it comes up), so that the master shows the relay
online, with its load, and knows the URL agents download from.

``data``: ``{"load": {"active_downloads", "clients", "files_served"},
"packages_complete", "interval", "package_url"}``.
"""

import os

from twisted.internet import task
from twisted.logger import Logger

from ..core.xmpp.link import LinkDown, LinkRefused, LinkTimeout

ACTION = "relay.status"


def packages_complete(root):
    """How many packages have their ``ROOT/.complete/PACKAGE_ID`` marker."""
    try:
        return sum(1 for entry in os.scandir(os.path.join(root, ".complete"))
                   if entry.is_file(follow_symlinks=False))
    except OSError:
        return 0


class StatusReporter:
    """Sends ``status()`` (a dict) as relay.status through ``link`` every ``interval``
    seconds of an up session; a refusal is logged once per reason."""

    log = Logger()

    def __init__(self, link, clock, interval, status):
        self.link, self.clock, self.interval, self.status = link, clock, interval, status
        self.sent = 0
        self._loop = None
        self._last_problem = None
        link.on_session(self.session_up, self.session_down)

    def session_up(self):
        self.session_down()
        self._loop = task.LoopingCall(self.send)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=True)

    def session_down(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None

    def send(self):
        data = dict(self.status(), interval=self.interval)
        d = self.link.request(ACTION, data, timeout=min(30.0, self.interval))
        self.sent += 1
        d.addCallbacks(self._answered, self._failed)
        return None  # the loop does not wait for the answer

    def _answered(self, _data):
        self._last_problem = None

    def _failed(self, failure):
        if failure.check(LinkDown):
            return None
        if failure.check(LinkRefused, LinkTimeout):
            problem = str(failure.value)
        else:
            problem = failure.getErrorMessage()
        if problem != self._last_problem:
            self._last_problem = problem
            self.log.warn("the master did not take relay.status: {problem}", problem=problem)
        return None
