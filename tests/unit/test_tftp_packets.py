"""The TFTP codec: the bytes of each packet as the RFCs spell them, and clean refusals."""

import pytest

from medulla_appliance.pxe.tftp import packets
from medulla_appliance.pxe.tftp.packets import ACK, DATA, ERROR, OACK, RRQ, WRQ, decode


def test_rrq_with_options_decodes_as_pxe_roms_send_it():
    wire = b"\x00\x01bootloader-uefi64/ipxe.efi\x00octet\x00tsize\x000\x00blksize\x001468\x00"
    assert decode(wire) == RRQ("bootloader-uefi64/ipxe.efi", "octet",
                               {"tsize": "0", "blksize": "1468"})


def test_mode_and_option_names_are_case_insensitive():
    rrq = decode(b"\x00\x01f\x00OcTeT\x00BlkSize\x00512\x00")
    assert rrq.mode == "octet"
    assert rrq.options == {"blksize": "512"}


def test_first_of_two_equal_options_counts():
    assert decode(b"\x00\x01f\x00octet\x00blksize\x00512\x00BLKSIZE\x001024\x00").options == \
        {"blksize": "512"}


@pytest.mark.parametrize("packet, wire", [
    (RRQ("a/b", "netascii"), b"\x00\x01a/b\x00netascii\x00"),
    (WRQ("up", "octet"), b"\x00\x02up\x00octet\x00"),
    (DATA(1, b"hello"), b"\x00\x03\x00\x01hello"),
    (DATA(65535, b""), b"\x00\x03\xff\xff"),
    (ACK(0), b"\x00\x04\x00\x00"),
    (ERROR(1, "File not found"), b"\x00\x05\x00\x01File not found\x00"),
    (OACK({"blksize": "1468", "tsize": "42"}), b"\x00\x06blksize\x001468\x00tsize\x0042\x00"),
])
def test_each_packet_encodes_and_decodes(packet, wire):
    assert packet.to_wire() == wire
    assert decode(wire) == packet


def test_data_block_numbers_roll_over_on_the_wire():
    assert packets.encode_data(65536, b"x") == b"\x00\x03\x00\x00x"
    assert packets.encode_data(65537, b"") == b"\x00\x03\x00\x01"


def test_error_without_final_nul_is_still_read():
    assert decode(b"\x00\x05\x00\x08refused") == ERROR(8, "refused")


def test_non_utf8_file_names_round_trip_to_the_same_bytes():
    wire = b"\x00\x01caf\xe9\x00octet\x00"
    assert decode(wire).to_wire() == wire


@pytest.mark.parametrize("wire, error", [
    (b"", packets.TruncatedPacket),
    (b"\x00", packets.TruncatedPacket),
    (b"\x00\x09whatever", packets.UnknownOpcode),
    (b"\x00\x04\x00", packets.TruncatedPacket),
    (b"\x00\x03\x00", packets.TruncatedPacket),
    (b"\x00\x01file\x00octet", packets.MalformedRequest),           # mode not terminated
    (b"\x00\x01file\x00", packets.MalformedRequest),                # no mode
    (b"\x00\x01\x00octet\x00", packets.MalformedRequest),            # empty name
    (b"\x00\x01f\x00binary\x00", packets.UnknownMode),
    (b"\x00\x01f\x00octet\x00blksize\x00", packets.MalformedRequest),  # option without value
    (b"\x00\x01f\x00octet\x00\x00512\x00", packets.MalformedRequest),  # empty option name
    (b"\x00\x01f\x00oct\xffet\x00", packets.MalformedRequest),         # mode not ASCII
    (b"\x00\x01" + b"a" * 3000 + b"\x00octet\x00", packets.MalformedRequest),
])
def test_bad_datagrams_raise_typed_errors(wire, error):
    with pytest.raises(error) as err:
        decode(wire)
    assert isinstance(err.value, packets.PacketError)
    assert err.value.code == packets.ERR_ILLEGAL_OP


def test_nul_inside_a_name_cannot_smuggle_a_path():
    # "x\0../../etc/passwd" ends the name at the first NUL: the rest is a bad mode.
    with pytest.raises(packets.UnknownMode):
        decode(b"\x00\x01x\x00../../etc/passwd\x00octet\x00")


def test_error_messages_are_bounded():
    wire = ERROR(0, "x" * 5000).to_wire()
    assert len(wire) == 4 + packets.MAX_ERROR_MESSAGE_BYTES + 1
