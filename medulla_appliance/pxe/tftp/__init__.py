"""TFTP (RFC 1350, 2347, 2348, 2349, 7440), read-only: ``packets`` (codec), ``options``
(negotiation), ``session`` (one transfer as a state machine), ``backend`` (the safe root
and generated files), ``limits``, and ``protocol`` (Twisted ports)."""
