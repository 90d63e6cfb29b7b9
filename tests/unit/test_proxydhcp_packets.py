"""The DHCP codec: messages round-trip, and hostile or truncated datagrams are a
``PacketError`` saying what is wrong (never another exception, never a wrong packet)."""

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medulla_appliance.pxe.dhcp import packets
from medulla_appliance.pxe.dhcp.packets import DHCPPacket, PacketError, decode, encode

MAC = bytes.fromhex("525400123456")


def discover(extra=None) -> DHCPPacket:
    opts = {packets.OPT_MESSAGE_TYPE: bytes((packets.DISCOVER,)),
            packets.OPT_VENDOR_CLASS: b"PXEClient:Arch:00000:UNDI:002001"}
    opts.update(extra or {})
    return DHCPPacket(xid=0x1234ABCD, flags=packets.FLAG_BROADCAST, chaddr=MAC + bytes(10),
                      options=opts)


def raw_with_options(option_bytes: bytes, *, file=b"", sname=b"", cookie=packets.MAGIC_COOKIE):
    header = packets.HEADER.pack(1, 1, 6, 0, 7, 0, 0, bytes(4), bytes(4), bytes(4), bytes(4),
                                 MAC.ljust(16, b"\0"), sname, file)
    return header + cookie + option_bytes


def test_a_pxe_discover_round_trips_with_every_field():
    packet = discover({packets.OPT_CLIENT_ARCH: b"\x00\x07"})
    packet.ciaddr = ipaddress.IPv4Address("192.0.2.9")
    packet.giaddr = ipaddress.IPv4Address("192.0.2.254")
    packet.sname, packet.file, packet.hops, packet.secs = b"boot", b"ipxe.efi", 1, 4
    back = decode(encode(packet))
    assert back == packet
    assert back.mac == "52:54:00:12:34:56"
    assert back.message_type == packets.DISCOVER


def test_encoded_packets_are_at_least_300_bytes_and_end_with_end():
    data = encode(discover())
    assert len(data) == packets.MIN_PACKET_BYTES
    assert data[packets.HEADER_BYTES:packets.OPTIONS_START] == packets.MAGIC_COOKIE
    assert data.rstrip(b"\0").endswith(bytes((packets.OPT_END,)))


def test_a_long_option_is_split_and_joined_again_rfc3396():
    value = bytes(range(256)) * 2  # 512 bytes: three TLVs on the wire
    wire = encode(discover({224: value}))
    assert wire.count(bytes((224, 255))) == 2
    assert decode(wire).options[224] == value


def test_a_repeated_option_is_concatenated():
    data = raw_with_options(b"\x35\x01\x01" + b"\x4d\x02iP" + b"\x4d\x02XE" + b"\xff")
    assert decode(data).options[packets.OPT_USER_CLASS] == b"iPXE"


def test_pad_bytes_and_a_missing_end_are_tolerated():
    packet = decode(raw_with_options(b"\x00\x00\x35\x01\x01\x00"))
    assert packet.message_type == packets.DISCOVER


def test_option_overload_reads_options_from_file_then_sname():
    file_options = b"\x3c\x09PXEClient\xff".ljust(128, b"\0")
    sname_options = b"\x5d\x02\x00\x09\xff".ljust(64, b"\0")
    data = raw_with_options(b"\x35\x01\x01\x34\x01\x03\xff", file=file_options,
                            sname=sname_options)
    packet = decode(data)
    assert packet.options[packets.OPT_VENDOR_CLASS] == b"PXEClient"
    assert packet.options[packets.OPT_CLIENT_ARCH] == b"\x00\x09"
    assert packet.file == b"" and packet.sname == b""   # they held options, not names
    assert packets.OPT_OVERLOAD not in packet.options


def test_without_overload_file_and_sname_are_names():
    packet = decode(raw_with_options(b"\xff", file=b"undionly.kpxe", sname=b"srv"))
    assert (packet.file, packet.sname) == (b"undionly.kpxe", b"srv")


@pytest.mark.parametrize("data, message", [
    (b"", "shorter than a DHCP header"),
    (bytes(239), "shorter than a DHCP header"),
    (bytes(5000), "longer than any DHCP message"),
    (raw_with_options(b"\xff", cookie=b"\x00\x00\x00\x00"), "no DHCP magic cookie"),
    (raw_with_options(b"\x35\x01"), "claims 1 bytes, 0 are left"),             # truncated
    (raw_with_options(b"\x35\x01\x01\x3c\xf0PXE"), "claims 240 bytes"),         # past the end
    (raw_with_options(b"\x35"), "has no length byte"),
    (raw_with_options(b"\x34\x01\x04\xff"), "overload"),                         # bad value
    (raw_with_options(b"\x34\x02\x01\x01\xff"), "overload"),                     # bad length
    (raw_with_options(b"\x34\x01\x01\xff", file=b"\x34\x01\x02\xff"), "inside an overloaded"),
    (raw_with_options(b"\x34\x01\x01\xff", file=b"\x3c\x7fPXE"), "in the file field"),
])
def test_hostile_datagrams_are_packet_errors_naming_the_problem(data, message):
    with pytest.raises(PacketError, match=message):
        decode(data)


def test_a_bad_op_or_hardware_length_is_refused():
    data = bytearray(raw_with_options(b"\xff"))
    data[0] = 3
    with pytest.raises(PacketError, match="op 3"):
        decode(bytes(data))
    data[0], data[2] = 1, 17
    with pytest.raises(PacketError, match="hardware address length 17"):
        decode(bytes(data))


def test_a_non_ethernet_client_has_no_mac():
    packet = decode(raw_with_options(b"\xff"))
    packet.htype = 6
    assert packet.mac is None


def test_suboptions_and_user_classes():
    assert packets.decode_suboptions(b"\x06\x01\x08\x47\x04\x80\x00\x00\x00\xff") == {
        6: b"\x08", 71: b"\x80\x00\x00\x00"}
    with pytest.raises(PacketError):
        packets.decode_suboptions(b"\x47\x09\x00")
    assert packets.user_classes(b"iPXE") == [b"iPXE"]                # iPXE's bare form
    assert packets.user_classes(b"\x04iPXE\x03foo") == [b"iPXE", b"foo"]  # RFC 3004
    assert packets.user_classes(b"\x09iPXE") == [b"\x09iPXE"]        # not length-prefixed


def test_encode_refuses_what_cannot_be_sent():
    packet = discover()
    packet.file = b"x" * 128
    with pytest.raises(ValueError):
        encode(packet)
    with pytest.raises(ValueError):
        packets.encode_options({packets.OPT_END: b"x"})


# -- properties -------------------------------------------------------------------------

option_codes = st.integers(1, 254).filter(lambda c: c != packets.OPT_OVERLOAD)
packets_strategy = st.builds(
    DHCPPacket,
    op=st.sampled_from((packets.BOOTREQUEST, packets.BOOTREPLY)),
    htype=st.integers(0, 255), hlen=st.integers(0, 16), hops=st.integers(0, 255),
    xid=st.integers(0, 2**32 - 1), secs=st.integers(0, 65535), flags=st.integers(0, 65535),
    ciaddr=st.ip_addresses(v=4), yiaddr=st.ip_addresses(v=4),
    siaddr=st.ip_addresses(v=4), giaddr=st.ip_addresses(v=4),
    chaddr=st.binary(min_size=16, max_size=16),
    sname=st.binary(max_size=63).map(lambda b: b.replace(b"\0", b"x")),
    file=st.binary(max_size=127).map(lambda b: b.replace(b"\0", b"x")),
    options=st.dictionaries(option_codes, st.binary(max_size=300), max_size=8))


@given(packets_strategy)
@settings(max_examples=300)
def test_every_packet_round_trips(packet):
    assert decode(encode(packet)) == packet


@given(st.binary(max_size=700))
@settings(max_examples=1000)
def test_any_bytes_decode_to_a_packet_or_a_packet_error(data):
    try:
        decode(data)
    except PacketError:
        pass


@given(st.binary(max_size=400), st.binary(max_size=128), st.binary(max_size=64))
@settings(max_examples=1000)
def test_any_options_after_a_valid_header_decode_or_fail_cleanly(options, file, sname):
    data = raw_with_options(options, file=file.ljust(128, b"\0"), sname=sname.ljust(64, b"\0"))
    try:
        packet = decode(data)
    except PacketError:
        return
    assert packet.xid == struct.unpack_from("!I", data, 4)[0]
