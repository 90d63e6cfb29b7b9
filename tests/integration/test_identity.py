"""A machine stays one machine: renamed, it keeps its uuid; reinstalled (new key, same
MAC), it is refused until the admin runs ``medullactl machine reset-key NAME``.

Against real prosody on loopback: the master and a swarm agent run as processes. The
swarm's agent 0 always has MAC 02:4d:00:00:00:00 and keeps its key in its state folder,
so a new prefix is a rename and a deleted state folder is a reinstall.

(Two machines sharing only a blacklisted MAC stay two machines: covered at unit level by
tests/unit/test_registry.py, since the swarm gives every agent its own MAC.)
"""

import json
import shutil
import subprocess
import sys
import time

import pytest

from medulla_appliance.core import keys
from medulla_appliance.testing.appliance import Appliance, stop_process

pytestmark = pytest.mark.integration

SWARM = "ws"  # one config, so one state folder, whatever the prefix
ENROL_TIMEOUT = 60


@pytest.fixture
def app(tmp_path, prosody_server):
    """A running master on prosody; swarms started through `app.start` are stopped."""
    app = Appliance(tmp_path / "app", prosody_server)
    app.processes = []

    def start(prefix):
        process = app.start_swarm(SWARM, 1, prefix=prefix)
        app.processes.append(process)
        return process

    app.start = start
    try:
        app.start_master()
        yield app
    finally:
        for process in app.processes:
            stop_process(process)
        app.stop_master()


def state_dir(app):
    return app.workdir / "agents" / SWARM / "state" / "00000"


def agent_fingerprint(app, timeout=30):
    """The fingerprint of the key the swarm's agent 0 holds on disk (once it made it)."""
    path = state_dir(app) / "agent.key"
    deadline = time.monotonic() + timeout
    while not path.exists():  # the key file appears whole (written aside, then linked)
        assert time.monotonic() < deadline, "%s not created in %ss" % (path, timeout)
        time.sleep(0.1)
    private = keys.load_or_create_private_key(path)
    return keys.fingerprint(private.public_key())


def details(app, name):
    return app.api("/api/v1/machines/%s" % name)


def only_machine(app):
    machines = app.machines()
    assert len(machines) == 1, [(m["hostname"], m["uuid"]) for m in machines]
    return machines[0]


def wait_enrolled(app, hostname, fingerprint):
    """Wait until `hostname` is online with the key `fingerprint` pinned."""
    return app.wait_for(lambda ms: any(
        m["hostname"] == hostname and m["online"] and m["key_fingerprint"] == fingerprint
        for m in ms), timeout=ENROL_TIMEOUT)


def wait_offline(app):
    app.wait_for(lambda ms: ms and not any(m["online"] for m in ms), timeout=30)


def wait_for_text(path, text, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    tail = path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"
    raise AssertionError("%r not in %s after %ss:\n%s" % (text, path.name, timeout, tail))


def swarm_registered(app):
    """How many agents the swarm process last reported as registered."""
    counts = [json.loads(line)["registered"]
              for line in (app.workdir / ("%s.log" % SWARM)).read_text().splitlines()
              if line.startswith('{"event": "progress"')]
    return counts[-1] if counts else None


def enrol(app, prefix):
    """Start the swarm as `prefix`, wait for its enrolment; returns the machine."""
    app.start(prefix)
    wait_enrolled(app, "%s-00000" % prefix, agent_fingerprint(app))
    return only_machine(app)


def stop_swarm(app):
    stop_process(app.processes.pop())
    wait_offline(app)


def medullactl(app, *argv):
    return subprocess.run([sys.executable, "-m", "medulla_appliance.ctl", *argv],
                          env=app.ctl_env(), capture_output=True, text=True, timeout=30)


def test_renamed_agent_with_the_same_key_stays_the_same_machine(app):
    before = enrol(app, "old")
    assert before["hostname"] == "old-00000"
    stop_swarm(app)

    # Same state folder: same key, same MAC, another hostname, so another JID: the agent
    # creates the account of its new JID by itself.
    app.start("new")
    wait_enrolled(app, "new-00000", before["key_fingerprint"])
    after = only_machine(app)
    assert after["uuid"] == before["uuid"]
    assert after["hostname"] == "new-00000"
    assert after["key_fingerprint"] == before["key_fingerprint"]
    assert after["jid"].startswith("new-00000.")
    history = details(app, after["uuid"])["history"]
    assert [(h["event"], h["detail"]) for h in history if h["event"] == "renamed"] == [
        ("renamed", "old-00000 -> new-00000")]
    assert [h["event"] for h in history].count("registered") == 1
    # The old name no longer designates it; the new one does.
    assert medullactl(app, "machine", "show", "old-00000").returncode == 1
    assert medullactl(app, "machine", "show", "new-00000").returncode == 0


def test_renamed_agent_creates_the_account_of_its_new_jid(app):
    enrol(app, "old")
    stop_swarm(app)
    app.start("new")
    log = app.workdir / ("%s.log" % SWARM)
    deadline = time.monotonic() + ENROL_TIMEOUT
    while time.monotonic() < deadline:
        assert "not-authorized" not in log.read_text(errors="replace"), \
            "the renamed agent cannot log in"
        if any(m["hostname"] == "new-00000" and m["online"] for m in app.machines()):
            return
        time.sleep(0.2)
    raise AssertionError("the renamed agent did not come back in %ss" % ENROL_TIMEOUT)


def test_reinstalled_agent_is_refused_until_its_key_is_reset(app):
    enrolled = enrol(app, "new")
    old_fingerprint = enrolled["key_fingerprint"]
    stop_swarm(app)

    # Reinstall: a fresh state folder, so a new key (and JID suffix) with the same MAC.
    shutil.rmtree(state_dir(app))
    app.start("new")
    wait_for_text(app.master_log, "key-mismatch", ENROL_TIMEOUT)
    refusals = [line for line in app.master_log.read_text().splitlines()
                if "refused agent.register from new-00000." in line]
    assert refusals and all("key-mismatch" in line for line in refusals)
    assert "medullactl machine reset-key" in refusals[0]
    wait_for_text(app.workdir / ("%s.log" % SWARM), "key-mismatch", 30)
    new_fingerprint = agent_fingerprint(app)
    assert new_fingerprint != old_fingerprint
    time.sleep(2)  # a progress line or two from the swarm
    assert swarm_registered(app) == 0
    refused = only_machine(app)
    assert refused["uuid"] == enrolled["uuid"]
    assert refused["key_fingerprint"] == old_fingerprint
    assert refused["online"] is False
    assert not any(h["event"] == "key-reset" for h in details(app, enrolled["uuid"])["history"])

    result = medullactl(app, "machine", "reset-key", "new-00000")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == ("key of new-00000 (%s) reset: its next enrolment pins the new "
                             "key\n" % enrolled["uuid"])
    assert "reset the key %s of machine new-00000 (%s)" % (old_fingerprint, enrolled["uuid"]) \
        in app.master_log.read_text()

    # The agent waits minutes before asking again after a refusal; a restart asks at once.
    stop_process(app.processes.pop())
    app.start("new")
    wait_enrolled(app, "new-00000", new_fingerprint)
    machine = only_machine(app)
    assert machine["uuid"] == enrolled["uuid"]
    assert machine["key_fingerprint"] == new_fingerprint
    events = [h["event"] for h in details(app, enrolled["uuid"])["history"]]  # newest first
    assert events.index("online") < events.index("key-reset") < events.index("offline")
    assert events.count("registered") == 1  # the same machine, not a new enrolment


def test_reset_key_of_an_unknown_machine_changes_nothing(app):
    enrolled = enrol(app, "ws")
    result = medullactl(app, "machine", "reset-key", "ghost")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "medullactl: no machine named 'ghost'\n"
    machine = only_machine(app)
    assert machine["key_fingerprint"] == enrolled["key_fingerprint"]
