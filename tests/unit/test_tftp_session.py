"""The transfer state machine on a fake clock: what goes out after each ACK, loss or silence."""

import io

import pytest
from twisted.internet.task import Clock

from medulla_appliance.pxe.tftp.packets import ACK, DATA, OACK, decode
from medulla_appliance.pxe.tftp.session import ReadSession, TransferTimedOut


class Source(io.BytesIO):
    closed_count = 0

    def close(self):
        self.closed_count += 1
        super().close()


def session(data: bytes, **kw):
    clock = kw.pop("clock", None) or Clock()
    return ReadSession(Source(data), clock=clock, **kw), clock


def blocks(datagrams):
    """The block numbers of DATA datagrams, and the packets for the rest."""
    out = []
    for d in datagrams:
        p = decode(d)
        out.append(p.block if isinstance(p, DATA) else p)
    return out


def ack(s, block):
    return blocks(s.receive_ack(block))


def test_lockstep_sends_one_block_per_ack_and_finishes_on_the_short_one():
    s, _ = session(b"a" * 1000)
    first = s.start()
    assert [decode(d) for d in first] == [DATA(1, b"a" * 512)]
    assert [decode(d) for d in s.receive_ack(1)] == [DATA(2, b"a" * 488)]
    assert ack(s, 2) == []
    assert s.finished and s.total_bytes == 1000 and s.blocks_sent == 2


@pytest.mark.parametrize("size, count", [(0, 1), (512, 2), (1024, 3), (511, 1)])
def test_a_size_multiple_of_the_block_ends_with_an_empty_block(size, count):
    s, _ = session(b"z" * size)
    sent = blocks(s.start())
    for block in range(1, count + 1):
        sent += ack(s, block)
    assert sent == list(range(1, count + 1))
    assert s.finished and s.total_bytes == size


def test_lost_data_is_sent_again_after_the_timeout_with_backoff():
    s, clock = session(b"x" * 2000, timeout=1.0, retries=3)
    s.start()
    assert ack(s, 1) == [2]          # DATA 2 is lost on the way
    clock.advance(0.99)
    assert s.on_timer() == []
    clock.advance(0.01)
    assert blocks(s.on_timer()) == [2]
    clock.advance(1.5)               # backed off to 2 s
    assert s.on_timer() == []
    clock.advance(0.5)
    assert blocks(s.on_timer()) == [2]
    assert ack(s, 2) == [3]          # progress resets the delay to 1 s
    assert s.deadline == clock.seconds() + 1.0
    assert s.retransmitted == 2


def test_lost_ack_makes_the_same_block_go_again_and_the_late_ack_counts():
    s, clock = session(b"x" * 1500)
    s.start()
    ack(s, 1)                        # DATA 2 reaches the client, its ACK is lost
    clock.advance(1.0)
    assert blocks(s.on_timer()) == [2]
    assert ack(s, 2) == [3]          # the client acknowledges the retransmission
    assert ack(s, 2) == []           # ...and its first ACK arrives late: ignored


def test_duplicate_ack_never_sends_anything_sorcerers_apprentice():
    s, _ = session(b"x" * 512 * 10)
    s.start()
    sent = []
    for block in range(1, 6):
        sent += ack(s, block)
        sent += ack(s, block)        # every ACK doubled (a delayed duplicate)
        sent += ack(s, block - 1)    # and an older one
    assert sent == [2, 3, 4, 5, 6]   # each block exactly once
    assert s.ignored_acks == 10


def test_ack_for_a_block_not_sent_yet_is_ignored():
    s, _ = session(b"x" * 5000)
    s.start()
    assert ack(s, 7) == []
    assert s.acked == 0


def test_options_start_with_oack_and_data_follows_ack_0():
    oack = OACK({"blksize": "8"}).to_wire()
    s, _ = session(b"0123456789", blksize=8, oack=oack)
    assert [decode(d) for d in s.start()] == [OACK({"blksize": "8"})]
    assert s.awaiting_oack
    assert [decode(d) for d in s.receive_ack(0)] == [DATA(1, b"01234567")]
    assert ack(s, 1) == [2] and ack(s, 2) == [] and s.finished


def test_lost_oack_is_sent_again():
    oack = OACK({"tsize": "3"}).to_wire()
    s, clock = session(b"abc", oack=oack)
    s.start()
    clock.advance(1.0)
    assert s.on_timer() == [oack]


def test_client_refusing_options_with_error_8_ends_the_session_cleanly():
    s, clock = session(b"abc", oack=OACK({"tsize": "3"}).to_wire())
    s.start()
    s.receive_error(8, "client does not accept options")
    assert s.options_refused
    assert s.deadline is None
    clock.advance(100)
    assert s.on_timer() == []        # nothing more goes out
    assert ack(s, 0) == []


def test_an_error_after_the_oack_is_not_an_option_refusal():
    s, _ = session(b"abc", oack=OACK({"tsize": "3"}).to_wire())
    s.start()
    s.receive_ack(0)
    s.receive_error(8, "whatever")
    assert not s.options_refused and s.aborted == (8, "whatever")


def test_silence_ends_in_a_timeout_after_the_retries():
    s, clock = session(b"x" * 100, timeout=1.0, retries=3)
    s.start()
    resent = 0
    waited = 0.0
    with pytest.raises(TransferTimedOut):
        while True:
            clock.advance(0.25)
            waited += 0.25
            resent += len(s.on_timer())
    assert resent == 3
    assert waited == 1 + 2 + 4 + 8   # 1 s, then doubled at each retry
    assert s.deadline is None


def test_backoff_is_capped():
    s, clock = session(b"x" * 100, timeout=4.0, retries=10)
    s.start()
    delays = []
    for _ in range(6):
        delays.append(s.deadline - clock.seconds())
        clock.advance(delays[-1])
        s.on_timer()
    assert delays == [4, 8, 16, 16, 16, 16]


def test_block_numbers_roll_over_past_65535_to_0():
    size = 8 * 70000 + 3
    s, _ = session(bytes(size), blksize=8)
    assert blocks(s.start()) == [1]
    wire = 1
    for absolute in range(1, 70001):
        out = s.receive_ack(wire)
        wire = decode(out[0]).block
        assert wire == (absolute + 1) & 0xFFFF
    assert ack(s, wire) == [] and s.finished
    assert s.blocks_sent == 70001 and s.total_bytes == size


def test_stale_ack_across_a_rollover_is_still_stale():
    s, _ = session(bytes(8 * 65540), blksize=8)
    s.start()
    for block in range(1, 65538):
        s.receive_ack(block & 0xFFFF)
    assert s.acked == 65537
    assert ack(s, 65535) == []       # wire 65535 is absolute 65535, long acknowledged
    assert ack(s, 0) == []           # absolute 65536, acknowledged
    assert ack(s, 2) == [3]


def test_windowsize_sends_a_window_per_ack():
    s, _ = session(b"y" * 512 * 10, windowsize=4)
    assert blocks(s.start()) == [1, 2, 3, 4]
    assert ack(s, 4) == [5, 6, 7, 8]
    assert ack(s, 8) == [9, 10, 11]  # 11 is the empty final block
    assert ack(s, 11) == [] and s.finished


def test_windowsize_gap_resends_from_the_block_after_the_ack():
    s, _ = session(b"y" * 512 * 20, windowsize=4)
    s.start()
    # Blocks 3 and 4 were lost: the client acknowledges 2, the last in order.
    assert ack(s, 2) == [3, 4, 5, 6]
    assert ack(s, 2) == []           # the same gap reported twice: no double window


def test_windowsize_timeout_resends_the_whole_window():
    s, clock = session(b"y" * 512 * 20, windowsize=3)
    s.start()
    ack(s, 3)
    clock.advance(1.0)
    assert blocks(s.on_timer()) == [4, 5, 6]


def test_windowsize_rolls_over_too():
    s, _ = session(bytes(8 * 65600), blksize=8, windowsize=16)
    sent = blocks(s.start())
    while not s.finished:
        sent += ack(s, sent[-1])
    assert len(sent) == 65601
    assert sent[65534:65538] == [65535, 0, 1, 2]


def test_close_releases_the_source_once_asked():
    s, _ = session(b"abc")
    s.start()
    s.close()
    assert s.source.closed_count == 1 and s.deadline is None


def test_read_errors_reach_the_caller():
    class Broken:
        def read(self, n):
            raise OSError(5, "Input/output error")

        def close(self):
            pass

    s = ReadSession(Broken(), clock=Clock())
    with pytest.raises(OSError):
        s.start()


@pytest.mark.parametrize("kw", [{"blksize": 0}, {"windowsize": 0}, {"timeout": 0},
                                {"retries": -1}])
def test_nonsense_parameters_are_refused(kw):
    with pytest.raises(ValueError):
        session(b"", **kw)


def test_ack_packets_from_the_codec_drive_it_too():
    s, _ = session(b"q" * 600)
    s.start()
    assert ack(s, ACK.from_wire(ACK(1).to_wire()).block) == [2]


@pytest.mark.parametrize("windowsize", [1, 3, 16])
def test_reading_ahead_changes_nothing_on_the_wire(windowsize):
    data = bytes(range(256)) * 40          # 10,240 bytes: 20 blocks and an empty 21st
    plain, _ = session(data, windowsize=windowsize)
    ahead, _ = session(data, windowsize=windowsize)
    sent_plain, sent_ahead = plain.start(), ahead.start()
    ahead.read_ahead()
    while not plain.finished:
        last = decode(sent_plain[-1]).block
        assert sent_ahead == sent_plain
        sent_plain, sent_ahead = plain.receive_ack(last), ahead.receive_ack(last)
        ahead.read_ahead()
    assert ahead.finished and ahead.total_bytes == plain.total_bytes == len(data)


def test_reading_ahead_knows_the_end_early_but_finishes_on_the_last_ack():
    s, _ = session(b"x" * 600)
    s.start()
    s.read_ahead()
    assert s.final_block == 2 and not s.finished
    assert ack(s, 1) == [2]
    assert ack(s, 2) == [] and s.finished


def test_read_ahead_after_a_gap_keeps_the_order():
    s, _ = session(b"y" * 512 * 30, windowsize=4)
    s.start()
    s.read_ahead()                           # 5-8 read, not sent
    assert ack(s, 2) == [3, 4, 5, 6]         # the gap: 3, 4 again, then 5, 6 from ahead
    s.read_ahead()
    assert ack(s, 6) == [7, 8, 9, 10]
