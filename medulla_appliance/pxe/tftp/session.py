"""One read transfer as a state machine: ACKs and timer ticks in, datagrams out.

No sockets and no reactor: the caller feeds ``receive_ack``/``receive_error``/``on_timer``,
sends the datagrams they return, and calls ``on_timer`` once ``deadline`` (read from the
injected clock) has passed. Blocks are numbered absolutely inside (Python ints), and only
their low 16 bits go on the wire, so block numbers roll over past 65535 to 0 as tftpd-hpa,
iPXE and curl expect. The OACK, when there is one, is "block 0" of the first window.

Sorcerer's Apprentice safety: a duplicate or stale ACK never triggers a send. Only a new
ACK moves the window and only the timer retransmits, with exponential backoff, so a
delayed duplicate cannot double every later block.
"""

from .packets import ERR_OPTIONS, MAX_BLOCK, encode_data

BACKOFF_FACTOR = 2.0
MAX_BACKOFF_SECONDS = 16.0


class TransferTimedOut(Exception):
    """The client stopped acknowledging: every retry went unanswered."""


class ReadSession:
    """Sends ``source`` (an object with ``read(n)`` and ``close()``) to one client.

    ``oack`` is the encoded OACK datagram when options were negotiated, else None.
    ``timeout`` is the first retransmission delay (backed off by ``BACKOFF_FACTOR`` up to
    ``MAX_BACKOFF_SECONDS``, or the timeout itself when larger); ``retries`` how many
    retransmissions in a row are made before giving up.
    """

    def __init__(self, source, *, clock, blksize=512, windowsize=1, timeout=1.0, retries=5,
                 oack=None):
        if blksize < 1 or windowsize < 1 or timeout <= 0 or retries < 0:
            raise ValueError("blksize, windowsize and timeout must be positive")
        self.source = source
        self.clock = clock
        self.blksize = blksize
        self.windowsize = windowsize
        self.base_timeout = self.timeout = float(timeout)
        self.max_timeout = max(self.base_timeout, MAX_BACKOFF_SECONDS)
        self.retries = retries
        self.attempts = 0           # retransmissions since the last new ACK
        self.retransmitted = 0      # datagrams sent again, over the whole transfer
        self.ignored_acks = 0       # duplicate, stale or out-of-window ACKs
        self.finished = False       # the final block was acknowledged
        self.aborted = None         # (code, message) of an ERROR from the client
        self.final_block = None     # absolute number of the short block, once read
        self.total_bytes = None     # bytes the whole transfer carries, once known
        self.deadline = None
        self._read = source.read
        # window[i] is the datagram of block acked + 1 + i, sent and not yet acknowledged;
        # ahead holds the blocks after the window, read and encoded but not sent yet.
        self._window = []
        self._ahead = []
        self._next_block = 1        # absolute number of the next block to read
        if oack is None:
            self.acked = 0
        else:
            self.acked = -1
            self._window.append(oack)

    # -- what the caller asks -------------------------------------------------------------

    @property
    def awaiting_oack(self) -> bool:
        """True until the client acknowledged the OACK (ACK of block 0)."""
        return self.acked < 0

    @property
    def blocks_sent(self) -> int:
        """Data blocks acknowledged so far (the final one included once finished)."""
        return max(self.acked, 0)

    def start(self) -> list:
        """The first datagrams: the OACK, or the first window of DATA."""
        if not self._window:
            self._fill()
        self.deadline = self.clock.seconds() + self.timeout
        return list(self._window)

    def receive_ack(self, block: int) -> list:
        """An ACK with wire block number ``block``: the datagrams to send next (maybe none)."""
        window = self._window
        # How far this ACK moves us, modulo 2**16: 1..len(window) is progress.
        step = (block - self.acked) & MAX_BLOCK
        if step == 0 or step > len(window) or self.finished or self.aborted:
            self.ignored_acks += 1
            return []
        self.acked += step
        del window[:step]
        if self.acked == self.final_block:
            self.finished = True
            self.deadline = None
            return []
        self.attempts = 0
        self.timeout = self.base_timeout
        self.deadline = self.clock.seconds() + self.timeout
        self._fill()
        return window[:]

    def read_ahead(self) -> None:
        """Read and encode the next window now, while the client digests the one just sent.

        Optional: what is not read ahead is read when the ACK comes. Calling it right after
        sending takes the file reads off the round trip.
        """
        ahead = self._ahead
        while len(ahead) < self.windowsize and self.final_block is None:
            ahead.append(self._read_block())

    def receive_error(self, code: int, message: str) -> None:
        """The client ended the transfer with an ERROR packet."""
        self.aborted = (code, message)
        self.deadline = None

    @property
    def options_refused(self) -> bool:
        """The client answered our OACK with error 8: it does not accept options."""
        return self.aborted is not None and self.acked < 0 and self.aborted[0] == ERR_OPTIONS

    def on_timer(self) -> list:
        """Retransmit the unacknowledged window if ``deadline`` has passed.

        Raises ``TransferTimedOut`` once ``retries`` retransmissions went unanswered.
        """
        if self.deadline is None:
            return []
        now = self.clock.seconds()
        if now < self.deadline:
            return []
        if self.attempts >= self.retries:
            self.deadline = None
            raise TransferTimedOut("no ACK after %d retransmissions (block %d)"
                                   % (self.attempts, self.acked + 1))
        self.attempts += 1
        self.timeout = min(self.timeout * BACKOFF_FACTOR, self.max_timeout)
        self.deadline = now + self.timeout
        self.retransmitted += len(self._window)
        return list(self._window)

    def close(self) -> None:
        """Release the source; safe to call more than once."""
        self.deadline = None
        self.source.close()

    # -- inside ---------------------------------------------------------------------------

    def _fill(self) -> None:
        """Top the window up from the blocks read ahead, then from the source."""
        window, ahead = self._window, self._ahead
        room = self.windowsize - len(window)
        if room <= 0:
            return
        if ahead:
            window.extend(ahead[:room])
            del ahead[:room]
            room = self.windowsize - len(window)
        while room > 0 and self.final_block is None:
            window.append(self._read_block())
            room -= 1

    def _read_block(self) -> bytes:
        blksize, block = self.blksize, self._next_block
        data = self._read(blksize)
        self._next_block = block + 1
        if len(data) < blksize:
            self.final_block = block
            self.total_bytes = (block - 1) * blksize + len(data)
        return encode_data(block, data)
