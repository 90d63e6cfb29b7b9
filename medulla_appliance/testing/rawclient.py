"""A bare XMPP client for hostile-input tests: logs in as any account (creating it by
in-band registration), sends the message bodies it is given to one JID, and prints every
message body it receives as a JSON line, then exits after `--wait` seconds.

It goes through the real XMPP server, with the same TLS and SCRAM as our daemons: what it
sends is exactly what a second, hostile account on the server could send.
"""

import argparse
import json
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--to", required=True)
    parser.add_argument("--bodies", required=True, help="JSON file: a list of strings")
    parser.add_argument("--wait", type=float, default=3.0)
    parser.add_argument("--forge-from", default=None,
                        help="put this 'from' on our messages (the server must not let it through)")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between messages")
    args = parser.parse_args(argv)
    with open(args.bodies, encoding="utf-8") as f:
        bodies = json.load(f)

    from medulla_appliance.core.runtime import install_asyncio_reactor
    install_asyncio_reactor()
    from twisted.internet import endpoints, reactor
    from twisted.words.protocols.jabber.jid import JID
    from twisted.words.xish import domish
    from wokkel.subprotocols import XMPPHandler

    from medulla_appliance.core.xmpp.auth import tls_options
    from medulla_appliance.core.xmpp.client import XMPPClientService
    from medulla_appliance.core.xmpp.handlers import MessageChannel

    jid, target = JID(args.jid), JID(args.to)

    def received(sender, body):
        sys.stdout.write(json.dumps({"from": sender.full(), "body": body}) + "\n")
        sys.stdout.flush()

    channel = MessageChannel(received)
    link = XMPPClientService(
        jid, args.password, endpoints.HostnameEndpoint(reactor, "127.0.0.1", args.port),
        tls_options(args.ca, jid.host), clock=reactor, register_wanted=lambda: True)
    link.addHandler(channel)

    def stop():
        if reactor.running:
            reactor.stop()

    def send(body):
        if args.forge_from is None:
            return channel.send_body(target, body)
        message = domish.Element((None, "message"))
        message["to"], message["type"], message["from"] = target.full(), "chat", args.forge_from
        message.addElement("body", content=body)
        channel.send(message)

    class Sender(XMPPHandler):
        def connectionInitialized(self):
            sys.stdout.write(json.dumps({"event": "connected"}) + "\n")
            sys.stdout.flush()
            for i, body in enumerate(bodies):
                reactor.callLater(i * args.gap, send, body)
            reactor.callLater(len(bodies) * args.gap + args.wait, stop)

    link.addHandler(Sender())
    link.startService()
    reactor.callLater(120, stop)  # never hang a test run
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
