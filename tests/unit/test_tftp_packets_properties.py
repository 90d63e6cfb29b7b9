"""Properties of the TFTP codec: every packet round-trips; any bytes fail cleanly."""

from hypothesis import given, settings
from hypothesis import strategies as st

from medulla_appliance.pxe.tftp import packets
from medulla_appliance.pxe.tftp.packets import ACK, DATA, ERROR, OACK, RRQ, WRQ, decode

blocks = st.integers(0, 0xFFFF)
names = st.binary(min_size=1, max_size=200).filter(lambda b: b"\0" not in b).map(
    lambda b: b.decode(packets.ENCODING, "surrogateescape"))
option_names = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=12)
option_values = st.text("".join(chr(c) for c in range(0x20, 0x7F)), max_size=12)
options = st.dictionaries(option_names, option_values, max_size=5)
messages = st.text(max_size=100).filter(lambda t: "\0" not in t)

any_packet = st.one_of(
    st.builds(RRQ, names, st.sampled_from(packets.MODES), options),
    st.builds(WRQ, names, st.sampled_from(packets.MODES), options),
    st.builds(DATA, blocks, st.binary(max_size=1500)),
    st.builds(ACK, blocks),
    st.builds(ERROR, st.integers(0, 8), messages),
    st.builds(OACK, options),
)


@given(any_packet)
@settings(max_examples=400)
def test_every_packet_round_trips(packet):
    assert decode(packet.to_wire()) == packet


@given(st.binary(max_size=600))
@settings(max_examples=1000)
def test_any_bytes_decode_to_a_packet_or_a_packet_error(data):
    try:
        packet = decode(data)
    except packets.PacketError:
        return
    assert packet.opcode == int.from_bytes(data[:2], "big")


@given(any_packet, st.binary(max_size=20))
@settings(max_examples=300)
def test_garbage_after_a_request_never_escapes_as_another_exception(packet, tail):
    try:
        decode(packet.to_wire() + tail)
    except packets.PacketError:
        pass
