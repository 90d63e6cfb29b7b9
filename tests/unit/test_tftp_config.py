"""pxe.ini: listen addresses in Twisted's endpoint style, and errors that name the line."""

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from medulla_appliance.core import config
from medulla_appliance.pxe.config import SCHEMA, listen_addresses, parse_listen
from medulla_appliance.pxe.service import PXEService


@pytest.mark.parametrize("text, expected", [
    ("udp:69", (69, "::")),
    ("udp:69:interface=::", (69, "::")),
    ("udp:6969:interface=127.0.0.1", (6969, "127.0.0.1")),
    ("udp:69:interface=\\:\\:1", (69, "::1")),
    ("udp:0:interface=fd00::1", (0, "fd00::1")),
])
def test_listen_items(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["tcp:69", "udp:", "udp:x", "udp:70000",
                                  "udp:69:iface=::", "udp:69:interface=eth0"])
def test_bad_listen_items(text):
    with pytest.raises(ValueError):
        parse_listen(text)


def write(tmp_path, body):
    path = tmp_path / "pxe.ini"
    path.write_text(body)
    return str(path)


def test_v4_and_v6_listen_list_from_a_file(tmp_path):
    cfg = config.load(write(tmp_path, "[tftp]\nlisten = udp:69:interface=0.0.0.0, "
                                      "udp:69:interface=\\:\\:\n"), SCHEMA)
    assert listen_addresses(cfg) == [(69, "0.0.0.0"), (69, "::")]


def test_a_bad_listen_value_names_file_line_section_and_key(tmp_path):
    path = write(tmp_path, "[global]\nlog_level = INFO\n[tftp]\nlisten = udp:sixtynine\n")
    cfg = config.load(path, SCHEMA)
    with pytest.raises(config.ConfigError) as err:
        listen_addresses(cfg)
    assert str(err.value).startswith("%s:4: [tftp] listen: bad UDP port" % path)


def test_a_missing_root_stops_the_build_with_a_clear_error(tmp_path):
    path = write(tmp_path, "[tftp]\nroot = %s\nlisten = udp:0:interface=127.0.0.1\n"
                 % (tmp_path / "nope"))
    cfg = config.load(path, SCHEMA)
    with pytest.raises(config.ConfigError) as err:
        PXEService(cfg, Clock())
    assert "[tftp] root:" in str(err.value) and "is not a folder" in str(err.value)


def test_reload_applies_limits_and_verbosity(tmp_path):
    path = write(tmp_path, "[tftp]\nroot = %s\nlisten = udp:0:interface=127.0.0.1\n" % tmp_path)
    svc = PXEService(config.load(path, SCHEMA), Clock())
    write(tmp_path, "[tftp]\nroot = %s\nlisten = udp:0:interface=127.0.0.1\nverbose = yes\n"
          "max_sessions_per_client = 3\nmenu_url =\n" % tmp_path)
    svc.reload(config.load(path, SCHEMA))
    server = svc.tftp.server
    assert server.verbose and server.limits.max_per_client == 3
    assert len(server.backend.generators) == 0
    assert svc.status_line() == ("TFTP: 0 transfers running, 0 served, 0 refused; "
                                 "HTTP: 0 scripts served, 0 refused")


def test_a_reload_with_one_bad_value_changes_nothing_and_says_so(tmp_path):
    # A good TFTP change beside a bad HTTP listen value: refused whole, so the TFTP limit
    # does not change either, and runtime is told (False) not to log "reloaded".
    path = write(tmp_path, "[tftp]\nroot = %s\nlisten = udp:0:interface=127.0.0.1\n" % tmp_path)
    svc = PXEService(config.load(path, SCHEMA), Clock())
    before = svc.tftp.server.limits.max_per_client
    write(tmp_path, "[tftp]\nroot = %s\nlisten = udp:0:interface=127.0.0.1\n"
          "max_sessions_per_client = %d\n[http]\nlisten = tcp:eighty\n" % (tmp_path, before + 1))
    assert svc.reload(config.load(path, SCHEMA)) is False
    assert svc.tftp.server.limits.max_per_client == before


def test_turning_the_proxydhcp_on_at_reload_asks_for_a_restart(tmp_path):
    path = write(tmp_path, "[tftp]\nroot = %s\nlisten = udp:0:interface=127.0.0.1\n" % tmp_path)
    svc = PXEService(config.load(path, SCHEMA), Clock())
    write(tmp_path, "[tftp]\nroot = %s\nlisten = udp:0:interface=127.0.0.1\n"
          "[proxydhcp]\nenabled = yes\ninterface = lo\n" % tmp_path)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert svc.reload(config.load(path, SCHEMA)) is True
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any("restart medulla-pxe" in formatEvent(e) for e in events)
    assert svc.proxydhcp is None
