"""Option negotiation: what goes in the OACK and what the transfer then uses."""

from medulla_appliance.pxe.tftp.options import (
    MAX_WINDOW_BYTES,
    Negotiated,
    OptionLimits,
    negotiate,
)

LIMITS = OptionLimits(max_blksize=1468, max_windowsize=16)


def test_no_options_means_no_oack_and_rfc1350_blocks():
    assert negotiate({}, LIMITS, 100) == Negotiated(512, 1, None, ())


def test_pxe_rom_request_gets_blksize_and_tsize_back_in_its_order():
    agreed = negotiate({"tsize": "0", "blksize": "1456"}, LIMITS, 12345)
    assert agreed.oack == (("tsize", "12345"), ("blksize", "1456"))
    assert agreed.blksize == 1456


def test_blksize_is_clamped_to_our_maximum():
    agreed = negotiate({"blksize": "65464"}, LIMITS, 1)
    assert agreed.blksize == 1468 and agreed.oack_options == {"blksize": "1468"}


def test_out_of_range_or_junk_values_are_left_out():
    agreed = negotiate({"blksize": "7", "timeout": "0", "windowsize": "x", "tsize": "-1",
                        "utimeout": "1000"}, LIMITS, 10)
    assert agreed == Negotiated(512, 1, None, ())


def test_timeout_is_taken_as_asked():
    agreed = negotiate({"timeout": "3"}, LIMITS, None)
    assert agreed.timeout == 3.0 and agreed.oack_options == {"timeout": "3"}


def test_tsize_is_left_out_when_the_size_is_unknown():
    assert negotiate({"tsize": "0"}, LIMITS, None).oack == ()


def test_tsize_0_is_left_out_because_curl_fails_on_it():
    assert negotiate({"tsize": "0", "blksize": "512"}, LIMITS, 0).oack == (("blksize", "512"),)


def test_windowsize_is_clamped_and_announced():
    agreed = negotiate({"windowsize": "64", "blksize": "1468"}, LIMITS, 1)
    assert agreed.windowsize == 16
    assert agreed.oack_options == {"windowsize": "16", "blksize": "1468"}


def test_window_bytes_are_bounded_whatever_the_order():
    big = OptionLimits(max_blksize=65464, max_windowsize=64)
    agreed = negotiate({"windowsize": "64", "blksize": "65464"}, big, 1)
    assert agreed.windowsize * agreed.blksize <= MAX_WINDOW_BYTES
    assert agreed.oack_options["windowsize"] == str(agreed.windowsize)
