"""Who is this agent: validation of its facts, its JID against them, and the decision that
ties a registration to a machine record."""

import pytest
from twisted.words.protocols.jabber.jid import JID

from medulla_appliance.master.logic.identity import (
    MAX_IPS,
    MAX_MACS,
    Decision,
    Refused,
    check_sender,
    decide,
    identity_macs,
    normalise_mac,
    parse_facts,
)

DOMAIN = "medulla.example"
KEY = "ed25519:" + "A" * 43 + "="
MAC1, MAC2 = "0a:1b:2c:3d:4e:5f", "0a:1b:2c:3d:4e:60"
VMWARE = "00:50:56:c0:00:01"


def facts_data(**changes):
    data = {"hostname": "pc01", "macs": [MAC1, MAC2], "ips": ["10.1.2.3", "fe80::1"],
            "os": "Debian GNU/Linux 12", "agent_version": "1.0.0", "inventory_tag": "lyon",
            "public_key": KEY, "services": {"ssh": True, "vnc": False}}
    data.update(changes)
    return data


def refused(data):
    with pytest.raises(Refused) as info:
        parse_facts(data)
    assert info.value.code == 400
    assert "\n" not in info.value.message
    return info.value


# -- parse_facts -------------------------------------------------------------------------

def test_valid_facts_are_normalised():
    facts = parse_facts(facts_data(macs=["0A-1B-2C-3D-4E-5F", MAC1.upper(), MAC2],
                                   ips=["2001:DB8::1", "10.1.2.3", "10.1.2.3"]))
    assert facts.hostname == "pc01"
    assert facts.macs == (MAC1, MAC2)                     # case, dashes and duplicates
    assert facts.ips == ("2001:db8::1", "10.1.2.3")
    assert facts.services == ("ssh",)                    # only those listening
    assert facts.public_key == KEY


def test_optional_fields_default_to_empty():
    facts = parse_facts({"hostname": "pc01", "macs": [MAC1], "public_key": KEY})
    assert (facts.ips, facts.os, facts.agent_version, facts.inventory_tag, facts.services) == \
        ((), "", "", "", ())


@pytest.mark.parametrize("data", [None, [], "pc01", 42])
def test_data_that_is_not_an_object_is_refused(data):
    assert "data" in refused(data).message


def test_ten_thousand_macs_are_refused_with_a_short_message():
    error = refused(facts_data(macs=["%012x" % i for i in range(10_000)]))
    assert error.message.startswith("macs:") and len(error.message) < 200


def test_the_maximum_number_of_macs_is_accepted():
    macs = ["02:00:00:00:%02x:%02x" % divmod(i, 256) for i in range(MAX_MACS)]
    assert len(parse_facts(facts_data(macs=macs)).macs) == MAX_MACS
    refused(facts_data(macs=macs + ["02:00:00:01:00:00"]))


@pytest.mark.parametrize("macs", [
    "0a:1b:2c:3d:4e:5f", {"mac": MAC1}, [MAC1, 7], [None], [["nested"]], ["a" * 65],
])
def test_macs_that_are_not_a_list_of_strings_are_refused(macs):
    assert refused(facts_data(macs=macs)).message.startswith("macs:")


@pytest.mark.parametrize("mac", ["0a:1b:2c:3d:4e", "0a:1b:2c:3d:4e:5g", "0a1b2c3d4e5f",
                                 "0a:1b:2c:3d:4e:5f:00", "", "0a:1b:2c:3d:4e:5f\nroot"])
def test_malformed_macs_are_refused(mac):
    assert refused(facts_data(macs=[MAC1, mac])).message.startswith("macs:")


def test_no_mac_at_all_is_refused():
    assert "at least one MAC" in refused(facts_data(macs=[])).message


def test_normalise_mac_accepts_dashes_and_capitals():
    assert normalise_mac(" 0A-1B-2C-3D-4E-5F ") == MAC1
    with pytest.raises(ValueError):
        normalise_mac("0a:1b:2c:3d:4e:5f:6a")


@pytest.mark.parametrize("ip", ["10.1.2.300", "10.1.2", "not-an-ip", "10.0.0.0/8",
                                "fe80::1%eth0", "fe80::1%eth0\nroot", ""])
def test_bad_ips_are_refused(ip):
    assert refused(facts_data(ips=["10.1.2.3", ip])).message.startswith("ips:")


@pytest.mark.parametrize("ips", [[1], [None], "10.1.2.3", ["10.0.0.1"] * (MAX_IPS + 1)])
def test_ips_that_are_not_a_bounded_list_of_strings_are_refused(ips):
    assert refused(facts_data(ips=ips)).message.startswith("ips:")


@pytest.mark.parametrize("hostname", [
    "", "pc 01", "pc01.example.org", "pc01\n", "x\nFailed password for root from 1.2.3.4",
    "pc01\r", "-pc01", "_pc01", "p" * 64, "pc\x1b[31m01", "pcé01", 42, None, ["pc01"],
])
def test_bad_hostnames_are_refused(hostname):
    error = refused(facts_data(hostname=hostname))
    assert error.message.startswith("hostname:")


def test_missing_hostname_is_refused():
    data = facts_data()
    del data["hostname"]
    refused(data)


def test_longest_valid_hostname_is_accepted():
    assert parse_facts(facts_data(hostname="P" * 63)).hostname == "P" * 63


@pytest.mark.parametrize("services", [
    {"telnet": True}, {"ssh": 1}, {"ssh": "yes"}, {"ssh": None}, ["ssh"], "ssh",
])
def test_services_with_unknown_keys_or_non_booleans_are_refused(services):
    assert refused(facts_data(services=services)).message.startswith("services:")


@pytest.mark.parametrize("changes", [
    {"public_key": ""}, {"public_key": 12}, {"public_key": "k" * 129},
    {"os": "o" * 257}, {"os": ["Debian"]},
    {"agent_version": "1.0 beta"}, {"agent_version": "1.0\n"}, {"agent_version": "v" * 65},
    {"inventory_tag": "t" * 65}, {"inventory_tag": 3},
])
def test_other_text_fields_are_checked(changes):
    key = next(iter(changes))
    assert refused(facts_data(**changes)).message.startswith(key + ":")


def test_missing_public_key_is_refused():
    data = facts_data()
    del data["public_key"]
    refused(data)


# -- check_sender ------------------------------------------------------------------------

FACTS = parse_facts(facts_data(hostname="PC01"))


@pytest.mark.parametrize("jid", [
    "pc01.ab1@medulla.example/0a1b2c3d4e5f",
    "pc01.zz9@medulla.example/0a1b2c3d4e60",    # any of its MACs
    "pc01.ab1@medulla.example/0A1B2C3D4E5F",    # resource case does not matter
])
def test_agent_jid_matching_its_facts_passes(jid):
    check_sender(FACTS, JID(jid), DOMAIN)


@pytest.mark.parametrize("jid", [
    "pc01.ab1@other.example/0a1b2c3d4e5f",      # wrong domain
    "pc02.ab1@medulla.example/0a1b2c3d4e5f",    # another hostname
    "pc01.ab@medulla.example/0a1b2c3d4e5f",     # suffix of 2
    "pc01.abcd@medulla.example/0a1b2c3d4e5f",   # suffix of 4
    "pc01.a_b@medulla.example/0a1b2c3d4e5f",    # suffix not [a-z0-9]
    "pc01@medulla.example/0a1b2c3d4e5f",        # no suffix
    "pc01.ab1@medulla.example/ffffffffffff",    # a MAC it does not have
    "pc01.ab1@medulla.example",                 # no resource
    "medulla.example/0a1b2c3d4e5f",             # no local part
    "x.pc01.ab1@medulla.example/0a1b2c3d4e5f",  # hostname with a dot before it
])
def test_agent_jid_not_matching_its_facts_is_refused_403(jid):
    with pytest.raises(Refused) as info:
        check_sender(FACTS, JID(jid), DOMAIN)
    assert (info.value.code, info.value.error) == (403, "sender-mismatch")


# -- identity_macs -----------------------------------------------------------------------

def test_blacklisted_macs_do_not_identify_a_machine():
    facts = parse_facts(facts_data(macs=[VMWARE, MAC1]))
    assert identity_macs(facts, frozenset({VMWARE})) == (MAC1,)
    assert identity_macs(facts, frozenset()) == (VMWARE, MAC1)
    only = parse_facts(facts_data(macs=[VMWARE]))
    assert identity_macs(only, {VMWARE}) == ()


# -- decide ------------------------------------------------------------------------------

def machine(uuid, hostname="pc01", fingerprint="SHA256:old"):
    return {"uuid": uuid, "hostname": hostname, "key_fingerprint": fingerprint}


def test_unknown_key_and_macs_is_a_new_machine():
    assert decide(FACTS, "SHA256:new", None, []) == Decision("new")


def test_known_key_is_the_same_machine_even_with_new_macs():
    facts = parse_facts(facts_data())
    decision = decide(facts, "SHA256:old", machine("m-1"), [])
    assert decision == Decision("known", "m-1", "")


def test_known_key_under_a_new_hostname_is_a_rename():
    facts = parse_facts(facts_data(hostname="pc02"))
    decision = decide(facts, "SHA256:old", machine("m-1", "pc01"), [machine("m-1", "pc01")])
    assert decision == Decision("known", "m-1", "pc01")


def test_macs_of_a_machine_with_another_key_are_refused_as_key_mismatch():
    with pytest.raises(Refused) as info:
        decide(FACTS, "SHA256:new", None, [machine("m-1", "pc01")])
    assert (info.value.code, info.value.error) == (409, "key-mismatch")
    assert "pc01 (m-1)" in info.value.message and "reset-key" in info.value.message


def test_macs_of_two_machines_are_refused_even_if_one_was_reset():
    with pytest.raises(Refused):
        decide(FACTS, "SHA256:new", None, [machine("m-1", fingerprint=""), machine("m-2")])


def test_machine_whose_key_was_reset_pins_the_new_key():
    facts = parse_facts(facts_data(hostname="pc01-new"))
    decision = decide(facts, "SHA256:new", None, [machine("m-1", "pc01", fingerprint="")])
    assert decision == Decision("known", "m-1", "pc01")
