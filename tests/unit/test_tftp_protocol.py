"""The server glue on a fake clock and fake ports: requests become transfers or refusals,
each refusal is one ERROR and one log line, limits hold, timers retransmit and give up."""

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent

from medulla_appliance.pxe.tftp import packets
from medulla_appliance.pxe.tftp.backend import Generators, SafeRoot
from medulla_appliance.pxe.tftp.packets import ACK, DATA, ERROR, OACK, RRQ, WRQ, decode
from medulla_appliance.pxe.tftp.protocol import TFTPServer

CLIENT = ("10.0.0.5", 2001)


class FakePort:
    def __init__(self, reactor, protocol, interface, peer):
        self.protocol, self.interface, self.peer = protocol, interface, peer
        self.sent, self.started, self.closed = [], False, False

    def start(self):
        self.started = True

    def send(self, datagram):
        self.sent.append(decode(datagram))

    def send_window(self, datagrams):
        for datagram in datagrams:
            self.send(datagram)

    def close(self):
        self.closed = True


class FakeListenerTransport:
    def __init__(self):
        self.sent = []

    def write(self, datagram, addr):
        self.sent.append((decode(datagram), addr))


class FakeListener:
    def __init__(self, interface="::"):
        self.interface = interface
        self.transport = FakeListenerTransport()


RUNNING = []


@pytest.fixture(autouse=True)
def stop_harnesses():
    yield
    while RUNNING:
        RUNNING.pop().server.stop()      # closes the files of transfers a test left running


class Harness:
    def __init__(self, root, **kw):
        RUNNING.append(self)
        self.clock = Clock()
        self.ports = []
        self.events = []
        generators = Generators()
        generators.register("hello.txt", lambda client, path: b"hello " + client.host.encode())

        def open_port(reactor, protocol, interface, peer):
            port = FakePort(reactor, protocol, interface, peer)
            self.ports.append(port)
            return port

        self.server = TFTPServer(SafeRoot(str(root), generators), reactor=self.clock,
                                 open_port=open_port, **kw)
        self.server.log = Logger(observer=self.events.append)
        self.listener = FakeListener()

    def request(self, packet, addr=CLIENT):
        data = packet if isinstance(packet, bytes) else packet.to_wire()
        self.server.request_received(data, addr, self.listener)

    def lines(self):
        return [formatEvent(e) for e in self.events]

    def refusals(self):
        return [(p, addr) for p, addr in self.listener.transport.sent]

    @property
    def port(self):
        return self.ports[-1]

    def ack(self, block, port=None):
        (port or self.port).protocol.datagramReceived(ACK(block).to_wire())


@pytest.fixture
def root(tmp_path):
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot" / "ipxe.efi").write_bytes(b"E" * 1000)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "text.txt").write_bytes(b"a\nb\n")
    (tmp_path / "big").write_bytes(b"B" * 512 * 10)
    return tmp_path


def test_a_read_request_runs_on_its_own_port_until_the_last_ack(root):
    h = Harness(root)
    h.request(RRQ("boot/ipxe.efi"))
    port = h.port
    assert port.peer == CLIENT and port.interface == "::" and port.started
    assert port.sent == [DATA(1, b"E" * 512)]
    h.ack(1)
    assert port.sent[-1] == DATA(2, b"E" * 488)
    h.ack(2)
    assert port.closed
    assert h.server.transfers == {} and h.server.limits.total == 0
    assert h.server.served == 1
    assert h.refusals() == []
    assert h.clock.getDelayedCalls() == []


def test_verbose_logs_each_rrq_as_tftpd_hpa_does(root):
    h = Harness(root, verbose=True)
    h.request(RRQ("boot/ipxe.efi"))
    assert h.lines()[0] == "RRQ from 10.0.0.5 filename boot/ipxe.efi"


def test_quiet_mode_logs_nothing_for_a_good_transfer(root):
    h = Harness(root)
    h.request(RRQ("empty"))
    h.ack(1)
    assert [e for e in h.events if e["log_level"].name != "debug"] == []


def test_ipv4_mapped_clients_are_shown_and_counted_as_ipv4(root):
    h = Harness(root, verbose=True)
    h.request(RRQ("empty"), ("::ffff:10.0.0.5", 3000))
    assert h.lines()[0] == "RRQ from 10.0.0.5 filename empty"
    assert h.server.limits.running("10.0.0.5") == 1


@pytest.mark.parametrize("name, code, reason", [
    ("../etc/passwd", 2, "parent-reference"),
    ("/etc/passwd", 2, "absolute-path"),
    ("..\\..\\windows\\win.ini", 2, "parent-reference"),
    ("boot\\x64\\wdsnbp.com", 2, "backslash"),
    ("boot/\x1b[2Jx", 2, "control-char"),
    ("missing", 1, "not-found"),
])
def test_each_refused_request_gets_one_error_and_one_log_line(root, name, code, reason):
    h = Harness(root)
    h.request(RRQ(name))
    assert h.ports == []
    [(error, addr)] = h.refusals()
    assert addr == CLIENT and isinstance(error, ERROR) and error.code == code
    [line] = h.lines()
    assert line.startswith("refused RRQ from 10.0.0.5 filename %s: %s (" % (name, reason))
    assert h.server.limits.total == 0 and h.server.refused == 1


def test_write_requests_are_refused_read_only(root):
    h = Harness(root)
    h.request(WRQ("boot/ipxe.efi"))
    [(error, _)] = h.refusals()
    assert error.code == packets.ERR_ACCESS and "read-only" in error.message
    assert h.lines() == ["refused WRQ from 10.0.0.5 filename boot/ipxe.efi: write-request "
                         "(read-only server)"]


def test_mail_mode_is_refused(root):
    h = Harness(root)
    h.request(RRQ("empty", "mail"))
    assert h.refusals()[0][0].code == packets.ERR_ILLEGAL_OP
    assert "mail-mode" in h.lines()[0]


def test_malformed_datagram_is_refused_and_logged(root):
    h = Harness(root)
    h.request(b"\x00\x01no-mode\x00")
    [(error, _)] = h.refusals()
    assert error.code == packets.ERR_ILLEGAL_OP
    assert h.lines()[0].startswith("refused packet from 10.0.0.5: malformed (")


def test_errors_and_acks_on_the_listening_port_are_never_answered(root):
    h = Harness(root)
    h.request(ERROR(0, "bye"))
    h.request(b"\x00\x05")           # even a broken one
    h.request(ACK(1))                # tftp-hpa acknowledges a refusal
    assert h.refusals() == []
    assert [e for e in h.events if e["log_level"].name != "debug"] == []


def test_stray_data_on_the_listening_port_is_refused(root):
    h = Harness(root)
    h.request(DATA(1, b"x"))
    assert h.refusals()[0][0].code == packets.ERR_UNKNOWN_TID


def test_per_client_limit_refuses_the_extra_transfer_and_frees_on_end(root):
    h = Harness(root, max_sessions_per_client=2)
    h.request(RRQ("big"), ("10.0.0.5", 1))
    h.request(RRQ("big"), ("10.0.0.5", 2))
    h.request(RRQ("big"), ("10.0.0.5", 3))
    assert len(h.ports) == 2
    [(error, addr)] = h.refusals()
    assert addr == ("10.0.0.5", 3) and error.code == packets.ERR_UNDEFINED
    assert "too-many-transfers" in h.lines()[-1]
    h.request(RRQ("big"), ("10.0.0.6", 1))         # another client is not affected
    assert len(h.ports) == 3
    h.ports[0].protocol.abort("test")
    h.request(RRQ("big"), ("10.0.0.5", 4))
    assert len(h.ports) == 4


def test_total_limit(root):
    h = Harness(root, max_sessions=3)
    for n in range(4):
        h.request(RRQ("big"), ("10.0.0.%d" % n, 69))
    assert len(h.ports) == 3
    assert "max_sessions" in h.refusals()[0][0].message


def test_a_retransmitted_rrq_does_not_start_a_second_transfer(root):
    h = Harness(root)
    h.request(RRQ("big"))
    h.request(RRQ("big"))
    assert len(h.ports) == 1 and h.server.limits.total == 1


def test_a_new_request_from_the_same_port_replaces_the_old_transfer(root):
    h = Harness(root)
    h.request(RRQ("big"))
    first = h.port
    h.ack(1)
    h.request(RRQ("boot/ipxe.efi"))
    assert first.closed and len(h.ports) == 2
    assert h.server.limits.total == 1


def test_client_refusing_options_frees_everything_and_may_ask_again(root):
    h = Harness(root, verbose=True)
    h.request(RRQ("boot/ipxe.efi", options={"tsize": "0"}))
    assert h.port.sent == [OACK({"tsize": "1000"})]
    h.port.protocol.datagramReceived(ERROR(8, "tsize only").to_wire())
    assert h.port.closed and h.server.limits.total == 0
    assert h.clock.getDelayedCalls() == []
    assert any(line.startswith("tftp: client does not accept options: 10.0.0.5 filename "
                               "boot/ipxe.efi") for line in h.lines())
    h.request(RRQ("boot/ipxe.efi"))          # the ROM asks again, without options
    assert h.port.sent == [DATA(1, b"E" * 512)]


def test_options_are_negotiated_into_the_session(root):
    h = Harness(root)
    h.request(RRQ("big", options={"blksize": "1024", "windowsize": "4", "tsize": "0"}))
    assert h.port.sent == [OACK({"blksize": "1024", "windowsize": "4", "tsize": "5120"})]
    h.ack(0)
    assert [p.block for p in h.port.sent[1:]] == [1, 2, 3, 4]
    assert len(h.port.sent[1].data) == 1024


def test_netascii_mode_converts_and_leaves_tsize_out(root):
    h = Harness(root)
    h.request(RRQ("text.txt", "netascii", {"tsize": "0"}))
    assert h.port.sent == [DATA(1, b"a\r\nb\r\n")]


def test_generated_file_is_made_for_the_client(root):
    h = Harness(root)
    h.request(RRQ("hello.txt"))
    assert h.port.sent == [DATA(1, b"hello 10.0.0.5")]


def test_silent_client_gets_retransmissions_then_the_transfer_times_out(root):
    h = Harness(root, timeout=1.0, retries=2)
    h.request(RRQ("big"))
    port = h.port
    h.clock.advance(1.0)
    h.clock.advance(2.0)
    assert port.sent == [DATA(1, b"B" * 512)] * 3
    assert not port.closed
    h.clock.advance(4.0)
    assert port.closed and h.server.transfers == {}
    assert "ended: timed out" in h.lines()[-1]
    assert h.clock.getDelayedCalls() == []


def test_progress_after_backoff_brings_the_short_timeout_back(root):
    h = Harness(root, timeout=1.0, retries=5)
    h.request(RRQ("big"))
    h.clock.advance(1.0)             # DATA 1 again; next try in 2 s
    h.ack(1)                         # then the client answers: next timeout is 1 s again
    assert h.port.sent[-1] == DATA(2, b"B" * 512)
    h.clock.advance(1.0)
    assert h.port.sent[-1] == DATA(2, b"B" * 512) and len(h.port.sent) == 4


def test_the_timer_is_not_rescheduled_per_packet(root):
    h = Harness(root)
    h.request(RRQ("big"))
    before = h.clock.getDelayedCalls()
    for block in range(1, 6):
        h.ack(block)
    assert h.clock.getDelayedCalls() == before


def test_client_error_mid_transfer_ends_it(root):
    h = Harness(root)
    h.request(RRQ("big"))
    h.ack(1)
    h.port.protocol.datagramReceived(ERROR(0, "user cancelled").to_wire())
    assert h.port.closed
    assert "ended: client error: error 0: user cancelled" in h.lines()[-1]


def test_closed_client_port_ends_the_transfer(root):
    h = Harness(root)
    h.request(RRQ("big"))
    h.port.protocol.connectionRefused()
    assert h.port.closed and h.server.limits.total == 0


def test_junk_on_a_transfer_port_changes_nothing(root):
    h = Harness(root)
    h.request(RRQ("big"))
    h.port.protocol.datagramReceived(b"\x00")
    h.port.protocol.datagramReceived(RRQ("other").to_wire())
    h.port.protocol.datagramReceived(DATA(1, b"x").to_wire())
    assert len(h.port.sent) == 1 and not h.port.closed


def test_read_error_sends_error_0_and_ends(root, monkeypatch):
    h = Harness(root)
    h.request(RRQ("big"))
    session = h.port.protocol.session

    def broken(n):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(session, "_read", broken)
    h.ack(1)
    assert h.port.sent[-1] == ERROR(0, "read error") and h.port.closed


def test_stop_aborts_every_transfer(root):
    h = Harness(root)
    h.request(RRQ("big"), ("10.0.0.1", 1))
    h.request(RRQ("big"), ("10.0.0.2", 1))
    h.server.stop()
    assert all(p.closed for p in h.ports) and h.server.transfers == {}


def test_a_flood_of_refusals_is_logged_within_a_budget_then_summed_up(root):
    h = Harness(root)
    for n in range(60):
        h.request(RRQ("../x%d" % n))
    assert len(h.refusals()) == 60                 # every request is answered
    assert len(h.lines()) == 50
    h.clock.advance(1.0)
    h.request(RRQ("../last"))
    assert h.lines()[-2] == "10 more refusals were not logged (over 50 a second)"
    assert "../last" in h.lines()[-1]


def test_a_failing_send_ends_the_transfer_without_an_exception(root):
    h = Harness(root)
    h.request(RRQ("big"))

    def broken(datagram):
        raise PermissionError(1, "Operation not permitted")  # a firewall said no

    h.port.send = broken
    h.ack(1)
    assert h.port.closed and h.server.transfers == {}
    assert "ended: send failed: Operation not permitted" in h.lines()[-1]


def test_a_full_socket_buffer_only_drops_the_rest_of_the_window(root):
    h = Harness(root)
    h.request(RRQ("big", options={"windowsize": "4"}))

    def full(datagrams):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    h.port.send_window = full
    h.ack(0)
    assert not h.port.closed
    h.clock.advance(1.0)            # the timer sends the window again
    h.port.send_window = lambda datagrams: h.port.sent.extend(map(decode, datagrams))
    h.clock.advance(2.0)
    assert [p.block for p in h.port.sent[1:]] == [1, 2, 3, 4]
