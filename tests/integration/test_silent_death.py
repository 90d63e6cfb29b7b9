"""A network that goes away without a word (cable pulled, NAT forgot us): no FIN, no RST.
The master notices with its pings, the agent with its keepalive, and when the network
comes back the agent reconnects by itself. Real prosody, real daemons, a freezing proxy
between the agent and the server."""

import time

import pytest

from medulla_appliance.testing.appliance import Appliance, stop_process
from medulla_appliance.testing.proxy import FreezableProxy

pytestmark = pytest.mark.integration


def test_silent_network_loss_is_detected_on_both_sides_and_healed(tmp_path, prosody_server):
    app = Appliance(tmp_path / "app", prosody_server,
                    presence={"ping_after": "2s", "ping_timeout": "2s"})
    proxy = FreezableProxy(prosody_server.c2s_port)
    agent = None
    try:
        app.start_master()
        agent = app.start_agent("far", connection={
            "port": proxy.port, "keepalive_interval": "2s", "keepalive_timeout": "2s",
            "max_reconnect_delay": "2s"})
        app.wait_for(lambda ms: len(ms) == 1 and ms[0]["online"], timeout=30)

        proxy.freeze()
        frozen_at = time.monotonic()
        machines = app.wait_for(lambda ms: not ms[0]["online"], timeout=15, interval=0.2)
        assert time.monotonic() - frozen_at < 2 + 2 + 3  # ping_after + ping_timeout + sweep
        history = app.api("/api/v1/machines/%s" % machines[0]["uuid"])["history"]
        assert (history[0]["event"], history[0]["detail"]) == ("offline", "no answer to ping")
        log = app.workdir / "far.log"
        deadline = time.monotonic() + 15
        while "nothing from the XMPP server" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)

        thawed = time.time()
        proxy.thaw()
        app.wait_for(lambda ms: ms[0]["online"], timeout=30)
        history = app.api("/api/v1/machines/%s" % machines[0]["uuid"])["history"]
        assert history[0]["event"] == "online" and history[0]["ts"] >= thawed
    finally:
        stop_process(agent)
        app.stop_master()
        proxy.close()
