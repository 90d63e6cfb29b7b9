"""The assessor: relay and rule lines from master.ini, and which relay an agent gets."""

import ipaddress

import pytest

from medulla_appliance.master.logic.assessor import (
    MASTER,
    Assessor,
    AssessorConfigError,
    Relay,
    parse_relay,
    parse_rule,
)

RELAYS = [Relay("lyon", "relay-lyon.example", 5222), Relay("paris", "2001:db8::5", 5223)]
NAMES = {"lyon", "paris", MASTER}


# -- relay lines -------------------------------------------------------------------------

def test_relay_line_gives_name_host_and_port():
    assert parse_relay("lyon relay-lyon.example:5222") == Relay("lyon", "relay-lyon.example",
                                                                5222)


def test_relay_with_ipv6_address_in_brackets():
    assert parse_relay("paris [2001:db8::5]:5223") == Relay("paris", "2001:db8::5", 5223)


@pytest.mark.parametrize("line", [
    "", "lyon", "lyon relay-lyon.example", "lyon relay-lyon.example:5222 extra",
    "lyon relay-lyon.example:", "lyon relay-lyon.example:0", "lyon relay-lyon.example:65536",
    "lyon relay-lyon.example:52x2", "lyon relay-lyon.example:-1", "lyon :5222",
])
def test_bad_relay_lines_are_refused_quoting_the_line(line):
    with pytest.raises(AssessorConfigError) as info:
        parse_relay(line)
    assert repr(line) in str(info.value)


def test_assessor_config_error_is_a_value_error():
    assert issubclass(AssessorConfigError, ValueError)


# -- rule lines --------------------------------------------------------------------------

def test_subnet_rule_parses_a_network_loosely():
    rule = parse_rule("subnet 10.1.2.3/16 lyon", NAMES)
    assert (rule.kind, rule.value, rule.relay) == (
        "subnet", ipaddress.ip_network("10.1.0.0/16"), "lyon")


def test_tag_rule_keeps_the_tag_text():
    rule = parse_rule("tag paris-office paris", NAMES)
    assert (rule.kind, rule.value, rule.relay) == ("tag", "paris-office", "paris")


@pytest.mark.parametrize("line, words", [
    ("subnet 10.1.0.0/16", "expected"),
    ("subnet 10.1.0.0/16 lyon extra", "expected"),
    ("ou OU=Lyon lyon", "expected"),
    ("subnet 10.1.0.0/16 marseille", "unknown relay 'marseille'"),
    ("subnet 10.1.0.0/33 lyon", "bad subnet"),
    ("subnet lyon-net lyon", "bad subnet"),
])
def test_bad_rule_lines_are_refused_with_the_reason(line, words):
    with pytest.raises(AssessorConfigError) as info:
        parse_rule(line, NAMES)
    assert words in str(info.value) and repr(line) in str(info.value)


def test_unknown_relay_error_lists_the_known_ones():
    with pytest.raises(AssessorConfigError, match="known: lyon, master, paris"):
        parse_rule("tag x nowhere", NAMES)


def test_default_relay_must_be_known():
    with pytest.raises(AssessorConfigError, match="default_relay 'nowhere'"):
        Assessor(RELAYS, [], "nowhere")


def test_rules_may_name_the_master():
    assessor = Assessor(RELAYS, ["tag hq master"], "lyon")
    assert assessor.relay_for([], "hq") == MASTER


# -- choosing ----------------------------------------------------------------------------

@pytest.fixture
def assessor():
    return Assessor(RELAYS, [
        "tag paris-office paris",
        "subnet 10.1.0.0/16 lyon",
        "subnet 10.0.0.0/8 paris",
        "subnet 2001:db8:1::/48 lyon",
    ], MASTER)


def test_subnet_rule_matches_any_of_the_agents_ipv4_addresses(assessor):
    assert assessor.relay_for(["192.168.1.5", "10.1.200.7"], "") == "lyon"


def test_subnet_rule_matches_ipv6(assessor):
    assert assessor.relay_for(["2001:db8:1:42::9"], "") == "lyon"
    assert assessor.relay_for(["2001:db8:2::9"], "") == MASTER


def test_first_matching_rule_wins(assessor):
    # 10.1.x.x is in both 10.1.0.0/16 (lyon, listed first) and 10.0.0.0/8 (paris).
    assert assessor.relay_for(["10.1.0.1"], "") == "lyon"
    assert assessor.relay_for(["10.2.0.1"], "") == "paris"
    # The tag rule comes first: it beats the subnet.
    assert assessor.relay_for(["10.1.0.1"], "paris-office") == "paris"


def test_tag_rule_needs_the_exact_tag(assessor):
    assert assessor.relay_for(["192.168.1.5"], "paris-office") == "paris"
    assert assessor.relay_for(["192.168.1.5"], "Paris-Office") == MASTER
    assert assessor.relay_for(["192.168.1.5"], "") == MASTER


def test_no_rule_matching_gives_the_default(assessor):
    assert assessor.relay_for(["172.16.0.1"], "elsewhere") == MASTER
    assert assessor.relay_for([], "") == MASTER


def test_unparseable_addresses_are_ignored(assessor):
    assert assessor.relay_for(["garbage", "10.1.0.1"], "") == "lyon"
    assert assessor.relay_for(["garbage"], "") == MASTER


def test_assessment_of_a_relay_gives_its_server_and_port(assessor):
    assert assessor.assessment(["10.1.0.1"], "") == {
        "relay": "lyon", "server": "relay-lyon.example", "port": 5222}
    assert assessor.assessment([], "paris-office") == {
        "relay": "paris", "server": "2001:db8::5", "port": 5223}


def test_assessment_of_the_master_keeps_the_agent_where_it_is(assessor):
    assert assessor.assessment(["172.16.0.1"], "") == {
        "relay": "master", "server": None, "port": None}


def test_from_config_reads_the_assessor_section():
    assessor = Assessor.from_config({
        "relays": ["lyon relay-lyon.example:5222"],
        "rules": ["subnet 10.1.0.0/16 lyon"], "default_relay": "master"})
    assert assessor.assessment(["10.1.9.9"], "")["server"] == "relay-lyon.example"
    assert assessor.assessment(["10.2.9.9"], "")["relay"] == "master"


def test_from_config_refuses_a_rule_naming_an_unlisted_relay():
    with pytest.raises(AssessorConfigError, match="unknown relay 'paris'"):
        Assessor.from_config({"relays": ["lyon relay-lyon.example:5222"],
                              "rules": ["tag x paris"], "default_relay": "master"})
