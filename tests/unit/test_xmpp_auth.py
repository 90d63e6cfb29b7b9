"""Stream initialisation of our XMPP clients, in memory: SCRAM against scramp's server side,
in-band registration, and a whole login over an XmlStream on a StringTransport."""

from base64 import b64decode, b64encode

import pytest
import scramp
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.words.protocols.jabber import sasl, xmlstream
from twisted.words.protocols.jabber.jid import JID
from twisted.words.xish import domish

from medulla_appliance.core.xmpp.auth import (
    NS_REGISTER,
    ClientAuthenticator,
    RegisterInitializer,
    RegistrationError,
    ScramInitializer,
    ScramMechanism,
    ServerSignatureMismatch,
    make_client_factory,
)

JID_ = JID("pc01.ab1@medulla.example/0a1b2c3d4e5f")
PASSWORD = "correct horse battery staple"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
SERVER_HEADER = (b"<stream:stream xmlns='jabber:client' xmlns:stream="
                 b"'http://etherx.jabber.org/streams' from='medulla.example' id='s1' "
                 b"version='1.0'>")
MECHANISMS = ("SCRAM-SHA-1", "SCRAM-SHA-256")


def scram_server(name, password=PASSWORD):
    mechanism = scramp.ScramMechanism(name)
    info = mechanism.make_auth_info(password, iteration_count=4096)
    return mechanism.make_server(lambda username: info)


def stanzas(transport):
    """The elements the client wrote since the last call (stream headers skipped)."""
    data, out = transport.value(), []
    transport.clear()
    parser = domish.elementStream()
    parser.DocumentStartEvent = lambda root: None
    parser.ElementEvent = out.append
    parser.DocumentEndEvent = lambda: None
    parser.parse(data if data.startswith(b"<stream:stream") else SERVER_HEADER + data)
    return out


def features(*children):
    return b"<stream:features>" + b"".join(children) + b"</stream:features>"


def mechanisms(*names):
    return (b"<mechanisms xmlns='%s'>" % NS_SASL.encode()
            + b"".join(b"<mechanism>%s</mechanism>" % n.encode() for n in names)
            + b"</mechanisms>")


STARTTLS = b"<starttls xmlns='%s'><required/></starttls>" % NS_TLS.encode()
REGISTER_FEATURE = b"<register xmlns='http://jabber.org/features/iq-register'/>"


# -- the SCRAM mechanism -----------------------------------------------------------------

@pytest.mark.parametrize("name", MECHANISMS)
def test_scram_exchange_with_a_server_that_knows_the_password(name):
    server = scram_server(name)
    client = ScramMechanism(name, JID_.user, PASSWORD)
    server.set_client_first(client.getInitialResponse().decode())
    response = client.getResponse(server.get_server_first().encode())
    server.set_client_final(response.decode())        # raises if the proof is wrong
    client.verify_server_final(server.get_server_final().encode())
    assert client.verified


@pytest.mark.parametrize("name", MECHANISMS)
def test_scram_client_proof_fails_with_a_wrong_password(name):
    server = scram_server(name, password="another password")
    client = ScramMechanism(name, JID_.user, PASSWORD)
    server.set_client_first(client.getInitialResponse().decode())
    response = client.getResponse(server.get_server_first().encode())
    with pytest.raises(scramp.ScramException):
        server.set_client_final(response.decode())


@pytest.mark.parametrize("name", MECHANISMS)
@pytest.mark.parametrize("final", [
    "v=" + b64encode(b"\x00" * 32).decode(), "e=invalid-proof", "v=", "garbage"])
def test_a_wrong_server_signature_is_refused(name, final):
    server = scram_server(name)
    client = ScramMechanism(name, JID_.user, PASSWORD)
    server.set_client_first(client.getInitialResponse().decode())
    server.set_client_final(client.getResponse(server.get_server_first().encode()).decode())
    with pytest.raises(ServerSignatureMismatch):
        client.verify_server_final(final.encode())
    assert not client.verified


def test_server_final_sent_as_a_challenge_is_verified(name="SCRAM-SHA-256"):
    server = scram_server(name)
    client = ScramMechanism(name, JID_.user, PASSWORD)
    server.set_client_first(client.getInitialResponse().decode())
    server.set_client_final(client.getResponse(server.get_server_first().encode()).decode())
    assert client.getResponse(server.get_server_final().encode()) == b""
    assert client.verified


# -- the SASL initializer ----------------------------------------------------------------

class Stream:
    """An XmlStream on a StringTransport, after the server's header."""

    def __init__(self):
        authenticator = xmlstream.Authenticator()
        authenticator.jid, authenticator.password = JID_, PASSWORD
        self.xs = xmlstream.XmlStream(authenticator)
        self.clock = Clock()
        self.xs._callLater = self.clock.callLater
        self.transport = StringTransport()
        self.xs.makeConnection(self.transport)
        self.xs.dataReceived(SERVER_HEADER)
        self.transport.clear()

    def offer(self, *names):
        element = domish.Element((NS_SASL, "mechanisms"))
        for name in names:
            element.addElement("mechanism", content=name)
        self.xs.features = {(NS_SASL, "mechanisms"): element}

    def receive(self, text):
        self.xs.dataReceived(text.encode() if isinstance(text, str) else text)


def outcome(d):
    out = []
    d.addBoth(out.append)
    return out


@pytest.mark.parametrize("offered, chosen", [
    (("PLAIN", "SCRAM-SHA-1", "SCRAM-SHA-256", "DIGEST-MD5"), "SCRAM-SHA-256"),
    (("PLAIN", "SCRAM-SHA-1"), "SCRAM-SHA-1"),
])
def test_the_strongest_scram_offered_is_chosen(offered, chosen):
    stream = Stream()
    stream.offer(*offered)
    ScramInitializer(stream.xs).start()
    (auth,) = stanzas(stream.transport)
    assert (auth.name, auth["mechanism"]) == ("auth", chosen)
    assert b64decode(str(auth)).startswith(b"n,,n=" + JID_.user.encode())


@pytest.mark.parametrize("offered", [("PLAIN",), ("DIGEST-MD5", "PLAIN"), ("ANONYMOUS",), ()])
def test_without_scram_nothing_is_sent_and_authentication_fails(offered):
    stream = Stream()
    stream.offer(*offered)
    with pytest.raises(sasl.SASLNoAcceptableMechanism):
        ScramInitializer(stream.xs).start()
    assert stream.transport.value() == b""          # the password never leaves


def scram_over_stream(name, final_for):
    """Run SCRAM on a Stream; `final_for(server)` gives the <success/> content."""
    stream, server = Stream(), scram_server(name)
    stream.offer(name)
    result = outcome(ScramInitializer(stream.xs).start())
    (auth,) = stanzas(stream.transport)
    server.set_client_first(b64decode(str(auth)).decode())
    stream.receive("<challenge xmlns='%s'>%s</challenge>" % (
        NS_SASL, b64encode(server.get_server_first().encode()).decode()))
    (response,) = stanzas(stream.transport)
    server.set_client_final(b64decode(str(response)).decode())
    stream.receive("<success xmlns='%s'>%s</success>" % (NS_SASL, final_for(server)))
    return stream, result


@pytest.mark.parametrize("name", MECHANISMS)
def test_full_sasl_exchange_over_the_stream_succeeds(name):
    stream, result = scram_over_stream(
        name, lambda server: b64encode(server.get_server_final().encode()).decode())
    assert result == [xmlstream.Reset]
    assert stream.transport.value().startswith(b"<stream:stream")   # restarted


@pytest.mark.parametrize("success", [
    b64encode(b"v=" + b64encode(b"\x01" * 32)).decode(),   # a server that guessed
    "",                                                    # no signature at all
    "=",
])
def test_a_server_that_cannot_sign_fails_authentication(success):
    stream, result = scram_over_stream("SCRAM-SHA-256", lambda server: success)
    assert len(result) == 1 and result[0].check(ServerSignatureMismatch)
    assert stream.transport.value() == b""                    # no stream restart


def test_a_sasl_failure_from_the_server_fails_authentication():
    stream = Stream()
    stream.offer("SCRAM-SHA-256")
    result = outcome(ScramInitializer(stream.xs).start())
    stream.receive("<failure xmlns='%s'><not-authorized/></failure>" % NS_SASL)
    assert result[0].check(sasl.SASLAuthError)
    assert result[0].value.condition == "not-authorized"


# -- in-band registration ----------------------------------------------------------------

def register_request(stream):
    (iq,) = stanzas(stream.transport)
    query = iq.firstChildElement()
    assert (iq["type"], iq["to"], query.uri) == ("set", "medulla.example", NS_REGISTER)
    assert (str(query.username), str(query.password)) == (JID_.user, PASSWORD)
    return iq


def test_registration_not_wanted_sends_nothing():
    stream = Stream()
    assert RegisterInitializer(stream.xs, lambda: False).initialize() is None
    assert stream.transport.value() == b""


def test_registration_sends_the_account_and_succeeds_on_result():
    stream = Stream()
    result = outcome(RegisterInitializer(stream.xs, lambda: True).initialize())
    iq = register_request(stream)
    stream.receive("<iq type='result' id='%s' from='medulla.example'/>" % iq["id"])
    assert result == [None]
    assert stream.clock.getDelayedCalls() == []


def error_reply(iq, condition, kind="cancel"):
    return ("<iq type='error' id='%s' from='medulla.example'><error type='%s'><%s xmlns="
            "'urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>" % (iq["id"], kind, condition))


def test_an_existing_account_is_fine():
    stream = Stream()
    result = outcome(RegisterInitializer(stream.xs, lambda: True).initialize())
    stream.receive(error_reply(register_request(stream), "conflict"))
    assert result == [None]


@pytest.mark.parametrize("condition", ["not-allowed", "not-acceptable", "service-unavailable"])
def test_other_registration_errors_fail_the_session(condition):
    stream = Stream()
    result = outcome(RegisterInitializer(stream.xs, lambda: True).initialize())
    stream.receive(error_reply(register_request(stream), condition))
    assert result[0].check(RegistrationError)
    assert condition in str(result[0].value)


def test_an_unanswered_registration_times_out():
    stream = Stream()
    result = outcome(RegisterInitializer(stream.xs, lambda: True).initialize())
    stream.clock.advance(29)
    assert result == []
    stream.clock.advance(1)
    assert result[0].check(xmlstream.TimeoutError)


# -- the whole client login ---------------------------------------------------------------

class TLSTransport(StringTransport):
    """A StringTransport that records startTLS instead of doing it."""

    tls = None

    def startTLS(self, options):
        self.tls = options


class Login:
    def __init__(self, register_wanted=False, tls="our-ca-options"):
        self.factory = make_client_factory(JID_, PASSWORD, tls, lambda: register_wanted)
        self.authd, self.failed = [], []
        self.factory.addBootstrap(xmlstream.STREAM_AUTHD_EVENT, self.authd.append)
        self.factory.addBootstrap(xmlstream.INIT_FAILED_EVENT, self.failed.append)
        self.xs = self.factory.buildProtocol(None)
        self.clock = Clock()
        self.xs._callLater = self.clock.callLater
        self.transport = TLSTransport()
        self.xs.makeConnection(self.transport)
        assert b"to='medulla.example'" in self.transport.value()
        self.transport.clear()

    def receive(self, *chunks):
        for chunk in chunks:
            self.xs.dataReceived(chunk.encode() if isinstance(chunk, str) else chunk)


def test_the_authenticator_negotiates_in_the_safe_order():
    xs = xmlstream.XmlStream(ClientAuthenticator(JID_, PASSWORD, None))
    kinds = [type(i).__name__ for i in xs.initializers]
    assert kinds == ["CheckVersionInitializer", "TLSInitiatingInitializer",
                     "RegisterInitializer", "ScramInitializer", "BindInitializer",
                     "SessionInitializer"]
    assert [i.required for i in xs.initializers[1:]] == [True, False, True, True, False]


@pytest.mark.parametrize("offer", [
    features(mechanisms("PLAIN", "SCRAM-SHA-256"), REGISTER_FEATURE),
    features(mechanisms("SCRAM-SHA-256")),
    features(),
])
def test_a_server_without_starttls_is_refused_before_any_secret_is_sent(offer):
    login = Login(register_wanted=True)
    login.receive(SERVER_HEADER, offer)
    assert len(login.failed) == 1 and login.authd == []
    assert login.failed[0].check(xmlstream.FeatureNotAdvertized)
    assert login.transport.value() == b""           # no password, no registration


def test_a_refused_starttls_fails_the_session():
    login = Login()
    login.receive(SERVER_HEADER, features(STARTTLS, mechanisms("SCRAM-SHA-256")))
    (starttls,) = stanzas(login.transport)
    assert (starttls.uri, starttls.name) == (NS_TLS, "starttls")
    login.receive("<failure xmlns='%s'/>" % NS_TLS)
    assert login.failed[0].check(xmlstream.TLSFailed)
    assert login.transport.tls is None


def test_a_full_login_goes_tls_then_registration_then_scram_then_bind():
    login = Login(register_wanted=True)
    login.receive(SERVER_HEADER, features(STARTTLS, mechanisms("PLAIN", "SCRAM-SHA-256"),
                                          REGISTER_FEATURE))
    assert [e.name for e in stanzas(login.transport)] == ["starttls"]
    login.receive("<proceed xmlns='%s'/>" % NS_TLS)
    assert login.transport.tls == "our-ca-options"  # the installation's CA, not the system's
    stanzas(login.transport)                         # the new stream header

    login.receive(SERVER_HEADER, features(mechanisms("PLAIN", "SCRAM-SHA-256"),
                                          REGISTER_FEATURE))
    (iq,) = stanzas(login.transport)
    assert iq.firstChildElement().uri == NS_REGISTER
    login.receive(error_reply(iq, "conflict"))       # the account exists: go on

    server = scram_server("SCRAM-SHA-256")
    (auth,) = stanzas(login.transport)
    assert auth["mechanism"] == "SCRAM-SHA-256"
    server.set_client_first(b64decode(str(auth)).decode())
    login.receive("<challenge xmlns='%s'>%s</challenge>" % (
        NS_SASL, b64encode(server.get_server_first().encode()).decode()))
    (response,) = stanzas(login.transport)
    server.set_client_final(b64decode(str(response)).decode())
    login.receive("<success xmlns='%s'>%s</success>" % (
        NS_SASL, b64encode(server.get_server_final().encode()).decode()))
    stanzas(login.transport)

    login.receive(SERVER_HEADER, features(b"<bind xmlns='%s'/>" % NS_BIND.encode()))
    (bind,) = stanzas(login.transport)
    assert str(bind.bind.resource) == JID_.resource
    login.receive("<iq type='result' id='%s'><bind xmlns='%s'><jid>%s</jid></bind></iq>"
                  % (bind["id"], NS_BIND, JID_.full()))
    assert login.failed == [] and login.authd == [login.xs]
    assert login.clock.getDelayedCalls() == []
