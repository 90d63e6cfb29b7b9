"""What the agent keeps between runs: its key, JID suffix and password, with tight modes."""

import json
import os
import re
import stat

import pytest

from medulla_agent.state import KEY_FILE, STATE_FILE, AgentState, StateError


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def directory(tmp_path):
    return str(tmp_path / "var" / "lib" / "medulla-agent")


def test_first_start_creates_a_private_directory_key_and_state(directory):
    state = AgentState(directory)
    assert mode(directory) == 0o700
    assert mode(os.path.join(directory, KEY_FILE)) == 0o600
    assert mode(os.path.join(directory, STATE_FILE)) == 0o600
    assert state.public_key_text.startswith("ed25519:")
    assert sorted(os.listdir(directory)) == [KEY_FILE, STATE_FILE]  # no temporary left


def test_directory_is_private_whatever_the_umask(directory):
    old = os.umask(0)
    try:
        AgentState(directory)
    finally:
        os.umask(old)
    assert mode(directory) == 0o700
    assert mode(os.path.join(directory, STATE_FILE)) == 0o600


def test_suffix_is_three_lowercase_letters_or_digits(directory):
    for i in range(20):
        suffix = AgentState(os.path.join(directory, str(i)))["suffix"]
        assert re.fullmatch(r"[a-z0-9]{3}", suffix), suffix


def test_identity_is_stable_across_restarts(directory):
    first = AgentState(directory)
    first.update(uuid="m-1", account_jid="pc01.ab1@medulla.example")
    again = AgentState(directory)
    assert again["suffix"] == first["suffix"]
    assert again["password"] == first["password"]
    assert again.public_key_text == first.public_key_text
    assert (again["uuid"], again["account_jid"]) == ("m-1", "pc01.ab1@medulla.example")


def on_disk(directory):
    with open(os.path.join(directory, STATE_FILE), encoding="utf-8") as f:
        return json.load(f)


def test_password_is_long_and_no_account_is_made_with_it_yet(directory):
    state = AgentState(directory)
    assert len(state["password"]) >= 16
    assert on_disk(directory)["account_jid"] is None


def test_injected_randomness_decides_suffix_and_password(directory):
    state = AgentState(directory, token=lambda n: "p" * n, choice=lambda alphabet: "z")
    assert (state["suffix"], state["password"]) == ("zzz", "p" * 24)


def test_updates_are_written_at_once(directory):
    state = AgentState(directory)
    state.update(assessment={"server": "relay.lyon", "port": 5222})
    assert on_disk(directory)["assessment"] == {"server": "relay.lyon", "port": 5222}
    assert mode(os.path.join(directory, STATE_FILE)) == 0o600


@pytest.mark.parametrize("garbage", [b"{not json", b"\xff\xfe\x00", b'{"suffix": "ab'])
def test_corrupt_state_is_moved_aside_and_the_key_kept(directory, garbage):
    first = AgentState(directory)
    path = os.path.join(directory, STATE_FILE)
    with open(path, "wb") as f:
        f.write(garbage)
    state = AgentState(directory)
    with open(path + ".corrupt", "rb") as f:
        assert f.read() == garbage
    assert state.public_key_text == first.public_key_text
    assert re.fullmatch(r"[a-z0-9]{3}", state["suffix"])
    saved = on_disk(directory)
    assert len(state["password"]) >= 16 and saved["account_jid"] is None
    assert "_recovered_from" not in saved       # the note stays in memory
    assert saved["suffix"] == state["suffix"]


def test_state_that_is_not_an_object_is_replaced(directory):
    AgentState(directory)
    with open(os.path.join(directory, STATE_FILE), "w", encoding="utf-8") as f:
        json.dump(["suffix", "abc"], f)
    state = AgentState(directory, choice=lambda alphabet: "q")
    assert state["suffix"] == "qqq"


@pytest.mark.parametrize("suffix", ["AB1", "ab", "abcd", "a.b", 123, None, "ab\n"])
def test_invalid_suffix_is_replaced_and_valid_values_kept(directory, suffix):
    AgentState(directory).update(uuid="m-9")
    path = os.path.join(directory, STATE_FILE)
    with open(path, encoding="utf-8") as f:
        values = json.load(f)
    values["suffix"] = suffix
    with open(path, "w", encoding="utf-8") as f:
        json.dump(values, f)
    state = AgentState(directory, choice=lambda alphabet: "k")
    assert state["suffix"] == "kkk"
    assert state["uuid"] == "m-9"
    assert state["password"] == values["password"]


def test_short_password_is_replaced_and_account_recreated(directory):
    state = AgentState(directory)
    state.update(password="short", account_jid="pc01.ab1@medulla.example")
    again = AgentState(directory)
    assert len(again["password"]) >= 16 and again["account_jid"] is None
    assert on_disk(directory)["account_jid"] is None


def test_a_key_readable_by_others_is_refused(directory):
    AgentState(directory)
    os.chmod(os.path.join(directory, KEY_FILE), 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        AgentState(directory)


def test_a_state_directory_that_cannot_be_created_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match=str(blocker)):
        AgentState(str(blocker / "state"))
