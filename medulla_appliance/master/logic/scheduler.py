"""Which target of a deployment starts now, waits, or expires: plain decisions from the
deployment's window, the machines online, the relays that hold the package and how many
deployments already run on each relay. No clock, no store: everything comes in.

States are the words Medulla admins know (PROTOCOL.md "States a user sees").
"""

from collections import Counter
from dataclasses import dataclass

PENDING = "DEPLOYMENT PENDING"
WAITING_ONLINE = "WAITING MACHINE ONLINE"
WAITING_SYNC = "WAITING PACKAGE SYNC"
STARTED = "DEPLOYMENT START"
TRANSFER_FAILED = "ABORT TRANSFER FAILED"
HASH_INVALID = "ABORT HASH INVALID"
EXECUTION_ERROR = "ABORT PACKAGE EXECUTION ERROR"
STOPPED = "ABORT DEPLOYMENT CANCELLED BY USER"
EXPIRED = "ABORT ON TIMEOUT"
MISSING_AGENT = "ABORT MISSING AGENT"
SUCCESS = "DEPLOYMENT SUCCESS"

WAITING = (PENDING, WAITING_ONLINE, WAITING_SYNC)
FINAL = (TRANSFER_FAILED, HASH_INVALID, EXECUTION_ERROR, STOPPED, EXPIRED, MISSING_AGENT,
         SUCCESS)
RETRYABLE = (TRANSFER_FAILED,)


@dataclass(frozen=True)
class Window:
    """A deployment's rules: its time window, concurrency per relay, retries."""

    start_at: float
    end_at: float
    max_per_relay: int
    retries: int
    stopped: bool = False


@dataclass(frozen=True)
class Target:
    """One machine of a deployment, as the scheduler sees it."""

    uuid: str
    state: str
    attempts: int
    relay: str


@dataclass(frozen=True)
class Decision:
    """`uuid` goes to `state`; `start` says whether to send deploy.start now; `detail`
    is the reason written to the audit log."""

    uuid: str
    state: str
    start: bool = False
    detail: str = ""


def running_per_relay(targets):
    """How many targets are transferring or executing on each relay."""
    return Counter(t.relay for t in targets if t.state == STARTED)


def decide(now, window, targets, online, ready_relays, busy=None):
    """The state changes of one scheduling pass over `targets`.

    `online`: uuids online now; `ready_relays`: relays where the package is complete;
    `busy`: running deployments per relay across all deployments (default: these
    targets'). Targets in a final state, or running, are left alone here.
    """
    busy = Counter(busy if busy is not None else running_per_relay(targets))
    changes = []
    for target in targets:
        if target.state in RETRYABLE:
            if window.stopped or now >= window.end_at or target.attempts > window.retries:
                continue  # the failure stands
        elif target.state in FINAL or target.state == STARTED:
            continue
        if window.stopped:
            new = STOPPED
        elif now >= window.end_at:
            new = EXPIRED
        elif now < window.start_at:
            new = PENDING
        elif target.uuid not in online:
            new = WAITING_ONLINE
        elif target.relay not in ready_relays:
            new = WAITING_SYNC
        elif busy[target.relay] >= window.max_per_relay:
            new = PENDING
        else:
            busy[target.relay] += 1
            changes.append(Decision(target.uuid, STARTED, start=True))
            continue
        if new != target.state:
            changes.append(Decision(target.uuid, new))
    return changes


def missing_agents(now, targets, online, offline_since, after):
    """Started targets whose agent is gone: `(decisions, offline_since)`.

    A started target whose machine has been offline (no XMPP session) for `after`
    seconds without a break becomes MISSING_AGENT. `offline_since` maps the uuids of
    started targets seen offline to when that was first seen; the returned map is the
    one to pass next time (machines back online, and targets no longer started, are
    dropped). An online agent is never declared missing: it is running a step, whose own
    timeout ends it, or downloading, whose requests time out, or waiting for an earlier
    deployment to finish — all of which end in a result.
    """
    decisions, still = [], {}
    for target in targets:
        if target.state != STARTED or target.uuid in online:
            continue
        since = offline_since.get(target.uuid, now)
        if now - since >= after:
            decisions.append(Decision(target.uuid, MISSING_AGENT, detail=(
                "the agent has been offline for %ds since the deployment started; a result "
                "it sends later still replaces this state" % round(now - since))))
        else:
            still[target.uuid] = since
    return decisions, still


def outcome_state(result):
    """The final state for an agent's deploy.result `state` word."""
    return {"success": SUCCESS, "error": EXECUTION_ERROR, "transfer-failed": TRANSFER_FAILED,
            "hash-invalid": HASH_INVALID, "stopped": STOPPED}.get(result, EXECUTION_ERROR)
