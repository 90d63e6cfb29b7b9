"""Which options of a read request we accept, and with what value (RFC 2347-2349, 7440).

``negotiate`` is pure: it takes what the client asked for and our limits, and returns the
transfer parameters plus the options to put in the OACK (empty: no OACK, plain RFC 1350).
Unknown or malformed options are left out of the OACK, which RFC 2347 defines as refusing
them; the transfer goes on without them.
"""

from dataclasses import dataclass

DEFAULT_BLKSIZE = 512
MIN_BLKSIZE = 8           # RFC 2348
MAX_BLKSIZE = 65464       # RFC 2348: 65535 less IP and UDP headers
MIN_TIMEOUT, MAX_TIMEOUT = 1, 255         # RFC 2349, in seconds
MIN_WINDOWSIZE, MAX_WINDOWSIZE = 1, 65535  # RFC 7440
# A window is sent in one burst and kept for retransmission: its bytes are bounded so a
# client asking for windowsize 65535 with 64 KiB blocks cannot make us buffer 4 GiB.
MAX_WINDOW_BYTES = 256 * 1024


@dataclass(frozen=True)
class OptionLimits:
    """The server's side of the negotiation (from the configuration)."""

    max_blksize: int = MAX_BLKSIZE
    max_windowsize: int = 64


@dataclass(frozen=True)
class Negotiated:
    """The parameters of one transfer and the OACK options that announce them."""

    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: float | None = None   # seconds asked by the client, else the server's default
    oack: tuple = ()               # ((name, value text), ...) in the client's order

    @property
    def oack_options(self) -> dict:
        return dict(self.oack)


def _int(text: str):
    text = text.strip()
    return int(text) if text.isdigit() and len(text) <= 10 else None


def negotiate(requested: dict, limits: OptionLimits, size: int | None) -> Negotiated:
    """Accept what we can of ``requested``; ``size`` is the tsize to report (None: omit)."""
    blksize, windowsize, timeout = DEFAULT_BLKSIZE, 1, None
    oack = []
    for name, text in requested.items():
        value = _int(text)
        if value is None:
            continue
        if name == "blksize" and value >= MIN_BLKSIZE:
            blksize = min(value, limits.max_blksize, MAX_BLKSIZE)
            oack.append((name, str(blksize)))
        elif name == "tsize" and size:
            # tsize 0 is left out: curl (up to 8.x at least) fails a transfer whose OACK
            # says tsize 0 ("invalid tsize value in OACK"), tftpd-hpa's included.
            oack.append((name, str(size)))
        elif name == "timeout" and MIN_TIMEOUT <= value <= MAX_TIMEOUT:
            timeout = float(value)
            oack.append((name, str(value)))
        elif name == "windowsize" and MIN_WINDOWSIZE <= value <= MAX_WINDOWSIZE:
            windowsize = min(value, limits.max_windowsize)
            oack.append((name, windowsize))
    if windowsize > 1:
        # The window bound depends on the final block size, whatever the order asked.
        windowsize = max(1, min(windowsize, MAX_WINDOW_BYTES // blksize))
        oack = [(n, str(windowsize) if n == "windowsize" else v) for n, v in oack]
    else:
        oack = [(n, str(v)) for n, v in oack]
    return Negotiated(blksize, windowsize, timeout, tuple(oack))
