"""proxyDHCP decisions without a reactor: who gets which boot file, who gets nothing, and
that silence costs at most one (rate-limited) log line."""

import ipaddress

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from medulla_appliance.core import config
from medulla_appliance.pxe.config import SCHEMA
from medulla_appliance.pxe.dhcp import packets
from medulla_appliance.pxe.dhcp.packets import DHCPPacket, decode, encode
from medulla_appliance.pxe.dhcp.proxy import (
    BOOT_SERVER_PORT,
    SERVER_PORT,
    ProxyDHCP,
    ProxySettings,
    QuietLog,
    settings_from_config,
)
from medulla_appliance.pxe.dhcp.udp import ProxyDHCPProtocol

SERVER = ipaddress.IPv4Address("192.0.2.2")
ALLOWED = "52:54:00:12:34:56"
OTHER = "52:54:00:ab:cd:ef"
SETTINGS = ProxySettings("br0", SERVER, frozenset({ALLOWED}),
                         {"bios": "undionly.kpxe", "efi32": "", "efi64": "ipxe.efi",
                          "arm64": "ipxe-arm64.efi"}, "autoexec.ipxe")
UUID = b"\x00" + bytes(range(16))


def request(mac=ALLOWED, kind=packets.DISCOVER, vendor=b"PXEClient:Arch:00000:UNDI:002001",
            arch=None, user_class=None, extra=None, **fields) -> bytes:
    options = {packets.OPT_MESSAGE_TYPE: bytes((kind,)), packets.OPT_CLIENT_UUID: UUID}
    if vendor is not None:
        options[packets.OPT_VENDOR_CLASS] = vendor
    if arch is not None:
        options[packets.OPT_CLIENT_ARCH] = arch.to_bytes(2, "big")
    if user_class is not None:
        options[packets.OPT_USER_CLASS] = user_class
    options.update(extra or {})
    return encode(DHCPPacket(xid=0xCAFE, flags=packets.FLAG_BROADCAST,
                             chaddr=bytes.fromhex(mac.replace(":", "")) + bytes(10),
                             options=options, **fields))


@pytest.fixture
def proxy():
    events = []
    proxy = ProxyDHCP(SETTINGS, Clock())
    proxy.log = Logger(observer=events.append)
    proxy.quiet.log = proxy.log
    proxy.events = events
    return proxy


def lines(proxy):
    return [formatEvent(e) for e in proxy.events]


def test_a_bios_pxe_rom_gets_an_offer_without_address_naming_us_and_its_boot_file(proxy):
    answer = proxy.handle(request(arch=0), ("0.0.0.0", 68), SERVER_PORT)
    reply = decode(answer.data)
    assert answer.destination == ("255.255.255.255", 68)
    assert reply.op == packets.BOOTREPLY and reply.message_type == packets.OFFER
    assert reply.xid == 0xCAFE and reply.flags == packets.FLAG_BROADCAST
    assert int(reply.yiaddr) == 0                                   # no address from us
    assert reply.siaddr == SERVER                                   # next-server
    assert reply.file == b"undionly.kpxe"
    assert reply.options[packets.OPT_BOOTFILE] == b"undionly.kpxe"
    assert reply.options[packets.OPT_VENDOR_CLASS] == b"PXEClient"
    assert reply.options[packets.OPT_SERVER_ID] == SERVER.packed
    assert reply.options[packets.OPT_CLIENT_UUID] == UUID          # echoed (PXE 2.1)
    assert packets.decode_suboptions(reply.options[packets.OPT_VENDOR_SPECIFIC]) == {
        packets.PXE_DISCOVERY_CONTROL: b"\x08"}
    assert reply.mac == ALLOWED
    assert lines(proxy) == ["proxyDHCP DHCPOFFER to 52:54:00:12:34:56 (bios, from 0.0.0.0): "
                            "next-server 192.0.2.2 file undionly.kpxe"]


@pytest.mark.parametrize("arch, bootfile", [
    (None, b"undionly.kpxe"),          # no option 93: a legacy BIOS ROM
    (7, b"ipxe.efi"), (9, b"ipxe.efi"), (11, b"ipxe-arm64.efi")])
def test_the_boot_file_follows_the_client_architecture(proxy, arch, bootfile):
    answer = proxy.handle(request(arch=arch), ("0.0.0.0", 68), SERVER_PORT)
    assert decode(answer.data).file == bootfile


@pytest.mark.parametrize("ipxe_marker", [
    {packets.OPT_USER_CLASS: b"iPXE"},                 # iPXE's bare user class
    {packets.OPT_USER_CLASS: b"\x04iPXE"},             # RFC 3004 form
    {packets.OPT_IPXE_ENCAP: b"\x13\x01\x01"},         # iPXE's own option 175
])
def test_a_client_already_in_ipxe_gets_the_script_not_ipxe_again(proxy, ipxe_marker):
    answer = proxy.handle(request(arch=9, extra=ipxe_marker), ("0.0.0.0", 68), SERVER_PORT)
    assert decode(answer.data).file == b"autoexec.ipxe"
    assert "(iPXE, from" in lines(proxy)[0]


def test_port_4011_answers_the_request_with_an_ack_to_its_sender_and_echoes_the_boot_item(
        proxy):
    item = {packets.OPT_VENDOR_SPECIFIC: b"\x47\x04\x80\x00\x00\x00\xff"}
    data = request(kind=packets.REQUEST, arch=7, extra=item,
                   ciaddr=ipaddress.IPv4Address("192.0.2.111"))
    answer = proxy.handle(data, ("192.0.2.111", 68), BOOT_SERVER_PORT)
    reply = decode(answer.data)
    assert answer.destination == ("192.0.2.111", 68)
    assert reply.message_type == packets.ACK
    assert reply.ciaddr == ipaddress.IPv4Address("192.0.2.111") and int(reply.yiaddr) == 0
    assert reply.file == b"ipxe.efi"
    assert packets.decode_suboptions(reply.options[packets.OPT_VENDOR_SPECIFIC])[
        packets.PXE_BOOT_ITEM] == b"\x80\x00\x00\x00"


def test_a_relayed_discover_is_answered_through_the_relay(proxy):
    data = request(giaddr=ipaddress.IPv4Address("198.51.100.1"))
    answer = proxy.handle(data, ("198.51.100.1", 67), SERVER_PORT)
    assert answer.destination == ("198.51.100.1", 67)
    assert decode(answer.data).giaddr == ipaddress.IPv4Address("198.51.100.1")


def test_a_mac_not_allowed_gets_nothing_and_one_info_line_a_minute(proxy):
    clock = proxy.quiet.clock
    for _ in range(5):
        assert proxy.handle(request(mac=OTHER), ("0.0.0.0", 68), SERVER_PORT) is None
    assert lines(proxy) == ["proxyDHCP ignored DHCPDISCOVER from 52:54:00:ab:cd:ef on port 67:"
                            " not-allowed: MAC 52:54:00:ab:cd:ef is not in allowed_macs"]
    assert proxy.events[0]["log_level"].name == "info"
    clock.advance(61)
    proxy.handle(request(mac=OTHER), ("0.0.0.0", 68), SERVER_PORT)
    assert lines(proxy)[1].endswith("not in allowed_macs (+4 similar since)")
    assert (proxy.answered, proxy.ignored) == (0, 6)


@pytest.mark.parametrize("data, port, reason", [
    (request(vendor=None), SERVER_PORT, "not-pxe"),                        # plain DHCP client
    (request(vendor=b"MSFT 5.0"), SERVER_PORT, "not-pxe"),
    (request(vendor=b"HTTPClient:Arch:00016"), SERVER_PORT, "not-pxe"),    # UEFI HTTP boot
    (request(kind=packets.REQUEST), SERVER_PORT, "not-for-us"),            # DHCP server's job
    (request(kind=packets.RELEASE), SERVER_PORT, "not-for-us"),
    (request(kind=packets.DISCOVER), BOOT_SERVER_PORT, "not-for-us"),
    (request(op=packets.BOOTREPLY), SERVER_PORT, "not-a-request"),         # another server
    (request(htype=6), SERVER_PORT, "not-ethernet"),
    (request(arch=6), SERVER_PORT, "no-bootfile"),                         # efi32 is empty
    (request(arch=0x1234), SERVER_PORT, "no-bootfile"),
    (request(extra={packets.OPT_CLIENT_ARCH: b"\x00"}), SERVER_PORT, "malformed"),
    (request(kind=packets.REQUEST, extra={packets.OPT_VENDOR_SPECIFIC: b"\x47\x09"}),
     BOOT_SERVER_PORT, "malformed"),
])
def test_requests_we_do_not_serve_are_ignored_with_their_reason(proxy, data, port, reason):
    assert proxy.handle(data, ("0.0.0.0", 68), port) is None
    assert len(proxy.events) == 1
    assert ": %s: " % reason in lines(proxy)[0]


@pytest.mark.parametrize("data", [b"", b"\x01" * 10, bytes(300), request()[:250],
                                  request().replace(packets.MAGIC_COOKIE, b"\0\0\0\0")])
def test_malformed_datagrams_get_no_answer_and_one_warning(proxy, data):
    assert proxy.handle(data, ("192.0.2.50", 68), SERVER_PORT) is None
    assert len(proxy.events) == 1
    assert proxy.events[0]["log_level"].name == "warn"
    assert lines(proxy)[0].startswith("proxyDHCP ignored a malformed packet from 192.0.2.50")


def test_a_flood_of_junk_from_many_sources_is_capped_per_second(proxy):
    for n in range(500):
        proxy.handle(b"junk", ("192.0.2.%d" % (n % 250), 68), SERVER_PORT)
    assert len(proxy.events) == proxy.quiet.budget.per_second
    proxy.quiet.clock.advance(1)
    proxy.handle(b"junk", ("198.51.100.1", 68), SERVER_PORT)
    assert "lines over 20/s not logged" in lines(proxy)[-1]


def test_quiet_log_remembers_a_bounded_number_of_keys():
    events, clock = [], Clock()
    quiet = QuietLog(Logger(observer=events.append), clock, per_second=10**9)
    for n in range(12_000):
        quiet.emit("info", ("x", n), "line {n}", n=n)
    assert len(quiet._last) <= 10_000


def test_reload_style_settings_change_takes_effect_at_once(proxy):
    assert proxy.handle(request(mac=OTHER), ("0.0.0.0", 68), SERVER_PORT) is None
    proxy.settings = ProxySettings("br0", SERVER, frozenset({OTHER}), SETTINGS.bootfiles,
                                   "autoexec.ipxe")
    assert proxy.handle(request(mac=OTHER), ("0.0.0.0", 68), SERVER_PORT) is not None


# -- the thin protocol --------------------------------------------------------------------

class FakeTransport:
    def __init__(self, error=None):
        self.sent, self.error = [], error

    def write(self, data, addr):
        if self.error:
            raise self.error
        self.sent.append((decode(data), addr))


class Owner:
    def __init__(self, proxy):
        self.proxy = proxy


def test_the_protocol_sends_the_answer_out_of_its_own_port(proxy):
    protocol = ProxyDHCPProtocol(Owner(proxy), SERVER_PORT)
    protocol.transport = FakeTransport()
    protocol.datagramReceived(request(), ("0.0.0.0", 68))
    protocol.datagramReceived(request(mac=OTHER), ("0.0.0.0", 68))
    protocol.datagramReceived(b"\xff" * 400, ("0.0.0.0", 68))
    [(reply, addr)] = protocol.transport.sent
    assert addr == ("255.255.255.255", 68) and reply.message_type == packets.OFFER


def test_a_send_error_is_one_warning_not_a_crash(proxy):
    protocol = ProxyDHCPProtocol(Owner(proxy), SERVER_PORT)
    protocol.transport = FakeTransport(OSError(101, "Network is unreachable"))
    protocol.datagramReceived(request(), ("0.0.0.0", 68))
    protocol.datagramReceived(request(), ("0.0.0.0", 68))
    assert [line for line in lines(proxy) if "could not send" in line] == [
        "proxyDHCP could not send DHCPOFFER to ('255.255.255.255', 68): "
        "[Errno 101] Network is unreachable"]


# -- configuration ------------------------------------------------------------------------

def load(tmp_path, body):
    path = tmp_path / "pxe.ini"
    path.write_text(body)
    return config.load(str(path), SCHEMA)


def test_settings_read_escaped_macs_and_boot_files(tmp_path):
    cfg = load(tmp_path, "[proxydhcp]\nenabled = yes\ninterface = br0\n"
                         "allowed_macs = 52\\:54\\:00\\:12\\:34\\:56, AA-BB-CC-DD-EE-FF\n"
                         "bootfile_efi64 = bootloader-uefi64/ipxe.efi\n")
    settings = settings_from_config(cfg)
    assert settings.allowed_macs == {ALLOWED, "aa:bb:cc:dd:ee:ff"}
    assert settings.bootfiles["efi64"] == "bootloader-uefi64/ipxe.efi"
    assert settings.server is None and settings.interface == "br0"


def test_proxydhcp_is_off_by_default_and_answers_nobody(tmp_path):
    cfg = load(tmp_path, "")
    assert cfg["proxydhcp"]["enabled"] is False
    assert settings_from_config(cfg).allowed_macs == frozenset()


@pytest.mark.parametrize("body, key", [
    ("enabled = yes\n", "interface"),                             # enabled needs an interface
    ("interface = eth0/../x\n", "interface"),
    ("interface = a-very-long-interface-name\n", "interface"),
    ("interface = br0\nserver_address = 2001:db8::1\n", "server_address"),
    ("interface = br0\nbootfile_bios = %s\n" % ("x" * 128), "bootfile_bios"),
])
def test_bad_settings_are_config_errors_naming_the_key(tmp_path, body, key):
    cfg = load(tmp_path, "[proxydhcp]\n" + body)
    with pytest.raises(config.ConfigError) as err:
        settings_from_config(cfg)
    assert err.value.key == key and err.value.line is not None


def test_a_malformed_mac_is_refused_by_the_ini_layer(tmp_path):
    with pytest.raises(config.ConfigError, match="allowed_macs"):
        load(tmp_path, "[proxydhcp]\nallowed_macs = 52:54:00:12:34\n")


# -- the service, without sockets ------------------------------------------------------------

def test_reload_applies_macs_and_boot_files_but_keeps_interface_and_address(tmp_path):
    from medulla_appliance.pxe.dhcp.udp import ProxyDHCPService
    service = ProxyDHCPService(load(tmp_path, "[proxydhcp]\nenabled = yes\ninterface = br0\n"
                                              "allowed_macs = %s\n" % ALLOWED), Clock())
    assert service.status_line() == "proxyDHCP: not started"
    service.proxy = ProxyDHCP(service.settings.with_server(SERVER), Clock())
    events = []
    service.log = Logger(observer=events.append)
    service.reload(load(tmp_path, "[proxydhcp]\nenabled = yes\ninterface = eth9\n"
                                  "allowed_macs = %s, %s\nbootfile_bios = lpxelinux.0\n"
                                  % (ALLOWED, OTHER)))
    assert service.proxy.settings.allowed_macs == {ALLOWED, OTHER}
    assert service.proxy.settings.bootfiles["bios"] == "lpxelinux.0"
    assert (service.proxy.settings.interface, service.proxy.settings.server) == ("br0", SERVER)
    assert [formatEvent(e) for e in events] == [
        "[proxydhcp] interface or server_address changed: restart medulla-pxe to use them"]
    assert service.status_line() == "proxyDHCP: 0 answered, 0 ignored, 2 allowed MACs"
