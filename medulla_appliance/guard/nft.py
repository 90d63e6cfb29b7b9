"""Where bans take effect: our own nftables table, or nowhere (dry run).

The nftables backend owns ``table inet <table>`` and nothing else: two sets with
``flags timeout`` (``banned4``, ``banned6``) and one input chain that rejects or drops
their members. Each ban is a set element with its own timeout, so the kernel lifts it
even if medulla-guard is dead. Start-up adds what is missing (``add`` is idempotent),
rewrites only our chain's rules, never flushes the sets, and lists them to restore the
bans. ``nft`` runs through the reactor's process API; bans asked while one ``nft`` runs
are batched into the next transaction.
"""

import ipaddress
import json
import re

from twisted.internet import defer, error, protocol
from twisted.logger import Logger

SETS = {4: "banned4", 6: "banned6"}
CHAIN = "input"
# Runs before the usual filter chains (priority 0): a banned address meets us first.
CHAIN_PRIORITY = -10
NFT_TIMEOUT_S = 20.0
MAX_OUTPUT_BYTES = 64 * 1024 * 1024
TABLE_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")


class NftError(Exception):
    """nft failed; str() is its first line of error output."""


def _family(address):
    return ipaddress.ip_address(address).version


def _ms(seconds):
    return "%dms" % max(1000, int(seconds * 1000))


def setup_script(table, verdict="reject"):
    """The transaction that creates our table (if missing) and rewrites our chain."""
    if not TABLE_RE.fullmatch(table):
        raise ValueError("table %r: letters, digits and _ only" % table)
    lines = ["add table inet %s" % table,
             "add set inet %s banned4 { type ipv4_addr; flags timeout; }" % table,
             "add set inet %s banned6 { type ipv6_addr; flags timeout; }" % table,
             "add chain inet %s %s { type filter hook input priority %d; policy accept; }"
             % (table, CHAIN, CHAIN_PRIORITY),
             "flush chain inet %s %s" % (table, CHAIN)]
    for match, name in (("ip saddr", "banned4"), ("ip6 saddr", "banned6")):
        if verdict == "reject":
            lines.append("add rule inet %s %s %s @%s meta l4proto tcp reject with tcp reset"
                         % (table, CHAIN, match, name))
            lines.append("add rule inet %s %s %s @%s reject" % (table, CHAIN, match, name))
        else:
            lines.append("add rule inet %s %s %s @%s drop" % (table, CHAIN, match, name))
    return "\n".join(lines) + "\n"


def ban_script(table, address, seconds):
    """Add (or renew) one element: add-delete-add, so an existing one gets the new time."""
    where = "inet %s %s" % (table, SETS[_family(address)])
    return ("add element %s { %s }\ndelete element %s { %s }\n"
            "add element %s { %s timeout %s }\n" % (where, address, where, address,
                                                   where, address, _ms(seconds)))


def unban_script(table, address):
    """Remove one element, present or not (adding it first makes the delete safe)."""
    where = "inet %s %s" % (table, SETS[_family(address)])
    return "add element %s { %s }\ndelete element %s { %s }\n" % (where, address, where,
                                                                   address)


def parse_set_listing(text):
    """[(address, remaining seconds)] from ``nft -j list set`` output."""
    data = json.loads(text)
    found = []
    for item in data.get("nftables", []):
        elements = item.get("set", {}).get("elem", []) if isinstance(item, dict) else []
        for element in elements:
            inner = element.get("elem") if isinstance(element, dict) else None
            if not isinstance(inner, dict):
                continue  # an element without timeout: not one of ours; leave it
            value, expires = inner.get("val"), inner.get("expires")
            if isinstance(value, str) and isinstance(expires, (int, float)):
                found.append((value, float(expires)))
    return found


class _NftProcess(protocol.ProcessProtocol):
    def __init__(self, script):
        self.script = script
        self.out, self.err = [], []
        self.size = 0
        self.done = defer.Deferred()

    def connectionMade(self):
        if self.script is not None:
            self.transport.write(self.script.encode("utf-8"))
        self.transport.closeStdin()

    def outReceived(self, data):
        self.size += len(data)
        if self.size <= MAX_OUTPUT_BYTES:
            self.out.append(data)

    def errReceived(self, data):
        if sum(map(len, self.err)) < 64 * 1024:
            self.err.append(data)

    def processEnded(self, reason):
        if reason.check(error.ProcessDone):
            self.done.callback(b"".join(self.out).decode("utf-8", "replace"))
            return
        text = b"".join(self.err).decode("utf-8", "replace").strip()
        lines = [line for line in text.splitlines() if line.strip()]
        message = lines[0] if lines else "nft exited: %s" % reason.getErrorMessage()
        self.done.errback(NftError(message))


class NftRunner:
    """Runs ``nft`` with arguments and a script on stdin, without blocking the reactor."""

    def __init__(self, reactor, nft="/usr/sbin/nft"):
        self.reactor, self.nft = reactor, nft

    def run(self, args, script=None):
        proto = _NftProcess(script)
        self.reactor.spawnProcess(proto, self.nft, [self.nft, *args], env={},
                                  childFDs={0: "w", 1: "r", 2: "r"})
        timer = self.reactor.callLater(NFT_TIMEOUT_S, self._kill, proto)

        def finished(result):
            if timer.active():
                timer.cancel()
            return result
        return proto.done.addBoth(finished)

    @staticmethod
    def _kill(proto):
        try:
            proto.transport.signalProcess("KILL")
        except error.ProcessExitedAlready:
            pass


class NftBackend:
    """Bans as elements of ``table inet <table>``'s sets (see the module docstring)."""

    log = Logger()
    name = "nftables"

    def __init__(self, runner, table="medulla_guard", verdict="reject"):
        self.runner, self.table, self.verdict = runner, table, verdict
        setup_script(table, verdict)  # validates the name before anything runs
        self._pending = []  # [(script, Deferred)]
        self._running = False
        self.transactions = 0

    def setup(self):
        """Create what is missing; fires with the bans already there."""
        d = self.runner.run(["-f", "-"], setup_script(self.table, self.verdict))
        d.addCallback(lambda _: self.list())
        return d

    @defer.inlineCallbacks
    def list(self):
        found = []
        for name in SETS.values():
            text = yield self.runner.run(["-j", "list", "set", "inet", self.table, name])
            found += parse_set_listing(text)
        return found

    def ban(self, address, seconds):
        return self._queue(ban_script(self.table, address, seconds))

    def unban(self, address):
        return self._queue(unban_script(self.table, address))

    def _queue(self, script):
        d = defer.Deferred()
        self._pending.append((script, d))
        if not self._running:
            self._next()
        return d

    def _next(self):
        if not self._pending:
            self._running = False
            return
        self._running = True
        batch, self._pending = self._pending, []
        self.transactions += 1
        d = self.runner.run(["-f", "-"], "".join(script for script, _ in batch))
        d.addCallbacks(lambda _: [waiter.callback(None) for _, waiter in batch],
                       lambda failure: self._one_by_one(batch, failure))
        d.addErrback(lambda f: self.log.failure("nft batch", f))
        d.addBoth(lambda _: self._next())

    def _one_by_one(self, batch, failure):
        """A transaction failed as a whole: run its parts alone, so one bad part fails."""
        if len(batch) == 1:
            batch[0][1].errback(failure)
            return None
        steps = []
        for script, waiter in batch:
            d = self.runner.run(["-f", "-"], script)
            d.addCallbacks(lambda _, w=waiter: w.callback(None), waiter.errback)
            steps.append(d)
        return defer.DeferredList(steps, consumeErrors=True)


class DryRunBackend:
    """Bans held in memory and logged, for machines without nftables (and tests)."""

    log = Logger()
    name = "dryrun"

    def __init__(self, clock):
        self.clock = clock
        self.elements = {}  # address -> expiry (clock time)

    def setup(self):
        return defer.succeed(self._current())

    def list(self):
        return defer.succeed(self._current())

    def _current(self):
        now = self.clock.seconds()
        self.elements = {a: t for a, t in self.elements.items() if t > now}
        return [(a, t - now) for a, t in self.elements.items()]

    def ban(self, address, seconds):
        self.elements[address] = self.clock.seconds() + seconds
        self.log.info("dry run: would ban {address} for {seconds}s", address=address,
                      seconds=round(seconds))
        return defer.succeed(None)

    def unban(self, address):
        self.elements.pop(address, None)
        self.log.info("dry run: would unban {address}", address=address)
        return defer.succeed(None)
