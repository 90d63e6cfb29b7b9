"""Several ports open as one step: all of them, or none left open."""

import pytest

from medulla_appliance.core.listening import listen_all


class Port:
    def __init__(self, number):
        self.number, self.listening = number, True

    def stopListening(self):
        self.listening = False


def test_every_address_is_opened_in_order():
    ports = listen_all([(69, "::"), (70, "127.0.0.1")], lambda port, interface: Port(port))
    assert [p.number for p in ports] == [69, 70] and all(p.listening for p in ports)


def test_a_port_that_cannot_be_opened_closes_those_already_open():
    opened = []

    def listen(port, interface):
        if port == 71:
            raise OSError(98, "Address already in use")
        opened.append(Port(port))
        return opened[-1]

    with pytest.raises(OSError, match="in use"):
        listen_all([(69, "::"), (70, "::"), (71, "::")], listen)
    assert [p.listening for p in opened] == [False, False]
