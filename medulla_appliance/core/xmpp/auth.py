"""Stream initialisation for our XMPP clients: STARTTLS against the installation's CA,
optional in-band registration (XEP-0077), SASL SCRAM, resource binding.

Twisted's own SASL initializer knows only PLAIN, DIGEST-MD5 and ANONYMOUS; PROTOCOL.md asks
for SCRAM, so the mechanism here does SCRAM-SHA-256 or SCRAM-SHA-1 (RFC 5802) with the
arithmetic from `scramp`, and checks the server's signature: a server that does not know
the password cannot pass itself off as ours.
"""

from base64 import b64decode

import scramp
from twisted.internet import ssl
from twisted.logger import Logger
from twisted.words.protocols.jabber import client, sasl, xmlstream
from twisted.words.protocols.jabber.error import StanzaError

NS_REGISTER = "jabber:iq:register"
NS_FEATURE_REGISTER = "http://jabber.org/features/iq-register"
# Strongest first; PLAIN and DIGEST-MD5 are never used, even under TLS.
REGISTER_TIMEOUT_SECONDS = 30
SCRAM_PREFERENCE = ("SCRAM-SHA-256", "SCRAM-SHA-1")


class ServerSignatureMismatch(sasl.SASLError):
    """The server's SCRAM signature is wrong: it does not know our password."""


def tls_options(ca_path, domain):
    """Client TLS options that trust only the installation's CA and check `domain`."""
    with open(ca_path, "rb") as f:
        authority = ssl.Certificate.loadPEM(f.read())
    return ssl.optionsForClientTLS(domain, trustRoot=authority)


class ScramMechanism:
    """An ISASLMechanism for SCRAM-SHA-*; `verify_server_final` checks the server."""

    def __init__(self, name, username, password):
        self.name = name
        self._client = scramp.ScramClient([name], username, password)
        self.verified = False

    def getInitialResponse(self):
        return self._client.get_client_first().encode("utf-8")

    def getResponse(self, challenge):
        text = challenge.decode("utf-8")
        if text.startswith("v=") or text.startswith("e="):
            # Some servers send the final message as a challenge, then an empty success.
            self.verify_server_final(challenge)
            return b""
        self._client.set_server_first(text)
        return self._client.get_client_final().encode("utf-8")

    def verify_server_final(self, data):
        try:
            self._client.set_server_final(data.decode("utf-8"))
        except scramp.ScramException as e:
            raise ServerSignatureMismatch(str(e)) from e
        self.verified = True


class ScramInitializer(sasl.SASLInitiatingInitializer):
    """SASL with SCRAM only, verifying the server's final message."""

    def setMechanism(self):
        auth = self.xmlstream.authenticator
        offered = sasl.get_mechanisms(self.xmlstream)
        for name in SCRAM_PREFERENCE:
            if name in offered:
                self.mechanism = ScramMechanism(name, auth.jid.user, auth.password)
                return
        raise sasl.SASLNoAcceptableMechanism(
            "server offers no SCRAM mechanism (offered: %s)" % ", ".join(offered))

    def onSuccess(self, success):
        content = str(success).strip()
        try:
            if content and content != "=":
                self.mechanism.verify_server_final(b64decode(content))
            if not self.mechanism.verified:
                raise ServerSignatureMismatch("server sent no SCRAM signature")
        except Exception:
            self.xmlstream.removeObserver("/challenge", self.onChallenge)
            self.xmlstream.removeObserver("/failure", self.onFailure)
            self._deferred.errback()
            return
        super().onSuccess(success)


class RegistrationError(Exception):
    """The server refused to create our account (other than: it exists already)."""


class RegisterInitializer:
    """XEP-0077 in-band registration after TLS and before SASL, when asked for.

    An account that exists already (`conflict`) is fine: SASL then proves the password.
    """

    log = Logger()

    def __init__(self, xs, wanted):
        self.xmlstream = xs
        self.wanted = wanted
        self.required = False

    def initialize(self):
        if not self.wanted():
            return None
        auth = self.xmlstream.authenticator
        iq = xmlstream.IQ(self.xmlstream, "set")
        query = iq.addElement((NS_REGISTER, "query"))
        query.addElement("username", content=auth.jid.user)
        query.addElement("password", content=auth.password)
        iq.timeout = REGISTER_TIMEOUT_SECONDS
        d = iq.send(auth.jid.host)
        d.addCallback(lambda _: self.log.info("registered XMPP account {jid}",
                                              jid=auth.jid.userhost()))
        d.addErrback(self._conflict_is_fine)
        return d

    def _conflict_is_fine(self, failure):
        failure.trap(StanzaError)
        if failure.value.condition == "conflict":
            return None
        raise RegistrationError(
            "in-band registration refused: %s" % failure.value.condition)


class ClientAuthenticator(client.XMPPAuthenticator):
    """TLS required (with our CA), optional in-band registration, SCRAM, bind."""

    def __init__(self, jid, password, tls, register_wanted=lambda: False):
        super().__init__(jid, password, configurationForTLS=tls)
        self._register_wanted = register_wanted

    def associateWithStream(self, xs):
        xmlstream.ConnectAuthenticator.associateWithStream(self, xs)
        xs.initializers = [
            client.CheckVersionInitializer(xs),
            xmlstream.TLSInitiatingInitializer(
                xs, required=True, configurationForTLS=self._configurationForTLS),
            RegisterInitializer(xs, self._register_wanted),
            ScramInitializer(xs, required=True),
            client.BindInitializer(xs, required=True),
            client.SessionInitializer(xs, required=False),
        ]


def make_client_factory(jid, password, tls, register_wanted=lambda: False):
    """An XmlStreamFactory whose streams authenticate as `jid` the way ours must."""
    return xmlstream.XmlStreamFactory(
        ClientAuthenticator(jid, password, tls, register_wanted))
