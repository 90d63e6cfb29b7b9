"""Opening several listening ports as one step."""


def listen_all(addresses, listen):
    """``listen(port, interface)`` for each ``(port, interface)``; the listening ports.

    All or none: when one cannot be opened, those already open are closed again before
    the error goes on, so a daemon that fails to start holds no port.
    """
    ports = []
    try:
        for port, interface in addresses:
            ports.append(listen(port, interface))
    except Exception:
        for opened in ports:
            opened.stopListening()
        raise
    return ports
