"""Which packages a relay serves: completion marker, descriptor checks, the per-version cache,
and the relay's configuration, limits and service wiring."""

import json
import os

import pytest
from twisted.internet import task
from twisted.internet.testing import MemoryReactor

from medulla_appliance.core import config, keys
from medulla_appliance.relay import config as relay_config
from medulla_appliance.relay.harness import write_package
from medulla_appliance.relay.limits import Busy, DownloadSlots
from medulla_appliance.relay.packages import NotServed, PackageStore, parse_files, valid_file_path

SHA = "a" * 64


def descriptor(*files):
    return json.dumps({"files": list(files)}).encode()


@pytest.mark.parametrize("path", ["a", "a/b.bin", "dir/sub/x y.txt", "é.bin", ".hidden"])
def test_valid_paths(path):
    assert valid_file_path(path)


@pytest.mark.parametrize("path", ["", "/etc/passwd", "../x", "a/../b", "a/./b", "a//b", "a/",
                                  "a\\b", "a\x00b", "a\nb", 5, None, "x" * 5000])
def test_invalid_paths(path):
    assert not valid_file_path(path)


def test_parse_files_reads_path_size_and_sha256():
    files = parse_files(descriptor({"path": "a/b", "size": 3, "sha256": SHA, "mode": "0644"}))
    assert files["a/b"].size == 3 and files["a/b"].sha256 == SHA


@pytest.mark.parametrize("raw, message", [
    (b"\xff", "not UTF-8 JSON"), (b"[]", "no 'files' list"), (b'{"files": 3}', "no 'files'"),
    (descriptor(3), "not an object"),
    (descriptor({"path": "../x", "size": 1, "sha256": SHA}), "path"),
    (descriptor({"path": "descriptor.json", "size": 1, "sha256": SHA}), "path"),
    (descriptor({"path": "a", "size": -1, "sha256": SHA}), "size"),
    (descriptor({"path": "a", "size": True, "sha256": SHA}), "size"),
    (descriptor({"path": "a", "size": 1, "sha256": SHA.upper()}), "sha256"),
    (descriptor({"path": "a", "size": 1, "sha256": SHA}, {"path": "a", "size": 1,
                                                           "sha256": SHA}), "twice"),
])
def test_parse_files_refuses_what_cannot_be_served(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_files(raw)


def test_a_package_is_checked_once_per_descriptor_version(tmp_path):
    write_package(tmp_path, "p", {"a.bin": b"abc"})
    store = PackageStore(str(tmp_path))
    first = store.package("p")
    (tmp_path / "p" / "a.bin").write_bytes(b"abcdef")   # sizes are not looked at again ...
    assert store.package("p") is first
    with pytest.raises(NotServed, match="not-synchronized"):  # ... but open() checks its file
        store.open(first, first.files["a.bin"])
    raw = (tmp_path / "p" / "descriptor.json").read_bytes()
    (tmp_path / "p" / "descriptor.json").write_bytes(raw.replace(b'"size": 3', b'"size": 6'))
    os.utime(tmp_path / "p" / "descriptor.json", ns=(1, 1))  # a new version, whatever the clock
    assert store.package("p").files["a.bin"].size == 6


def test_a_missing_file_keeps_the_package_not_synchronized(tmp_path):
    write_package(tmp_path, "p", {"a.bin": b"abc", "b.bin": b"d"})
    (tmp_path / "p" / "b.bin").unlink()
    with pytest.raises(NotServed) as err:
        PackageStore(str(tmp_path)).package("p")
    assert err.value.reason == "not-synchronized" and "'b.bin': missing" in err.value.message


def test_package_ids_are_checked(tmp_path):
    store = PackageStore(str(tmp_path))
    for bad in ("", ".complete", "../p", "a/b", "x" * 129):
        with pytest.raises(NotServed, match="not-found"):
            store.package(bad)


# -- limits ----------------------------------------------------------------------------------

def test_download_slots_per_client_and_in_all():
    slots = DownloadSlots(total=3, per_client=2)
    slots.acquire("a")
    slots.acquire("a")
    with pytest.raises(Busy, match="client-busy"):
        slots.acquire("a")
    slots.acquire("b")
    with pytest.raises(Busy, match="relay-busy"):
        slots.acquire("c")
    slots.release("a")
    slots.acquire("c")
    assert (slots.active, slots.clients) == (3, 3)
    slots.set_limits(10, 10)
    slots.acquire("a")
    with pytest.raises(RuntimeError):
        slots.release("nobody")


# -- configuration and service --------------------------------------------------------------

def write_ini(tmp_path, text):
    path = tmp_path / "relay.ini"
    path.write_text("[keys]\nmaster_public_key = %s\n%s" % (
        keys.public_key_text(keys.generate_private_key()), text))
    return str(path)


def test_defaults(tmp_path):
    cfg = config.load(write_ini(tmp_path, ""), relay_config.RELAY_SCHEMA)
    assert cfg["http"]["listen"] == "tcp:9990"
    assert cfg["packages"]["root"] == "/var/lib/medulla/packages"
    assert relay_config.listen_endpoint(cfg) == "tcp:9990"


def test_the_master_public_key_is_required(tmp_path):
    path = tmp_path / "relay.ini"
    path.write_text("[global]\nlog_level = INFO\n")
    with pytest.raises(config.ConfigError, match="master_public_key"):
        config.load(str(path), relay_config.RELAY_SCHEMA)


def test_certificate_and_key_are_added_to_an_ssl_endpoint(tmp_path):
    cfg = config.load(write_ini(tmp_path, "[http]\nlisten = ssl:9990\ncertificate = /etc/c:1.pem\n"
                                          "private_key = /etc/k.pem\n"),
                      relay_config.RELAY_SCHEMA)
    assert relay_config.listen_endpoint(cfg) == \
        "ssl:9990:privateKey=/etc/k.pem:certKey=/etc/c\\:1.pem"


@pytest.mark.parametrize("http, message", [
    ("listen = tcp:9990\ncertificate = /c\nprivate_key = /k\n", "ssl:"),
    ("listen = ssl:9990\ncertificate = /c\n", "go together"),
    ("listen = ssl:9990:privateKey=/k\ncertificate = /c\nprivate_key = /k\n", "already"),
])
def test_certificate_settings_that_do_not_fit(tmp_path, http, message):
    cfg = config.load(write_ini(tmp_path, "[http]\n" + http), relay_config.RELAY_SCHEMA)
    with pytest.raises(ValueError, match=message):
        relay_config.listen_endpoint(cfg)


def test_service_listens_and_sighup_reloads_limits_and_key(tmp_path):
    from medulla_appliance.relay.service import RelayService
    path = write_ini(tmp_path, "[http]\nlisten = tcp:0\n[packages]\nroot = %s\n"
                               "max_downloads = 5\n" % tmp_path)
    reactor = MemoryReactor()
    reactor.seconds = task.Clock().seconds
    relay = RelayService(config.load(path, relay_config.RELAY_SCHEMA), reactor)
    relay.startService()
    assert reactor.tcpServers and reactor.tcpServers[0][0] == 0
    assert relay.slots.total == 5
    new_key = keys.generate_private_key()
    (tmp_path / "relay.ini.local").write_text(
        "[packages]\nmax_downloads = 7\nmax_downloads_per_client = 3\n"
        "[http]\nidle_timeout = 5s\n[keys]\nmaster_public_key = %s\n"
        % keys.public_key_text(new_key))
    relay.reload(config.load(path, relay_config.RELAY_SCHEMA))
    assert (relay.slots.total, relay.slots.per_client) == (7, 3)
    assert relay.resource.stall_timeout == 5 and relay.site.timeOut == 5
    assert keys.public_key_text(relay.resource.public_key) == keys.public_key_text(new_key)
    assert "0 downloads running" in relay.status_line()
    relay.stopService()


def test_a_bad_master_key_stops_the_build(tmp_path):
    from medulla_appliance.relay.service import RelayService
    path = tmp_path / "relay.ini"
    path.write_text("[keys]\nmaster_public_key = ed25519:nope\n")
    with pytest.raises(keys.PublicKeyError):
        RelayService(config.load(str(path), relay_config.RELAY_SCHEMA), MemoryReactor())
