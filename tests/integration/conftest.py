"""Fixtures that run real XMPP servers (prosody, ejabberd) on 127.0.0.1 in temp folders."""

import pytest

from medulla_appliance.testing.pki import CertificateAuthority
from medulla_appliance.testing.xmppserver import KINDS, make_server

DOMAIN = "medulla.test"


@pytest.fixture(scope="session")
def ca(tmp_path_factory):
    """One test CA for the whole run; servers present certificates it issued."""
    return CertificateAuthority.create(tmp_path_factory.mktemp("ca"))


def _running_server(kind, workdir, ca):
    server = make_server(kind, workdir, DOMAIN, ca)
    server.start()
    try:
        yield server
    finally:
        server.close()  # stops it; logs end up in workdir, the rest is removed


@pytest.fixture(params=KINDS)
def xmpp_server(request, tmp_path, ca):
    """A started server of each kind in turn, stopped (by PID) and cleaned up at teardown."""
    yield from _running_server(request.param, tmp_path / request.param, ca)


@pytest.fixture
def prosody_server(tmp_path, ca):
    yield from _running_server("prosody", tmp_path / "prosody", ca)


@pytest.fixture
def ejabberd_server(tmp_path, ca):
    yield from _running_server("ejabberd", tmp_path / "ejabberd", ca)
