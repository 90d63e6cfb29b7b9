"""syncthing.ini: peers, names, the API key and its config.xml fallback, the entry point."""

import pytest

from medulla_appliance.core import config
from medulla_appliance.syncthing import __main__ as entry
from medulla_appliance.syncthing.config import (
    SCHEMA,
    Settings,
    api_key_from_config_xml,
    node_name,
    parse_peer,
    read_api_key,
)

RELAY_ID = "YPDKACQ-DJ5TONZ-4ZOLBDY-ZNMJYSK-O6IL4ER-D32AQID-HAJARTL-3LRCTA7"
MASTER_ID = "FDXK2TM-IW4H3YI-EGGBUJ6-JSGK7KB-S2TIIFY-2RWPUQR-PKCDY4S-2RHUUQR"


def load(tmp_path, text):
    path = tmp_path / "syncthing.ini"
    path.write_text(text)
    return config.load(str(path), SCHEMA)


def test_a_peer_is_a_name_a_device_id_and_direct_addresses():
    peer = parse_peer(f"lyon {RELAY_ID.lower()} tcp://10.0.0.2:22000 tcp://[fd00::2]:22000")
    assert peer.name == "lyon" and peer.device_id == RELAY_ID
    assert peer.addresses == ("tcp://10.0.0.2:22000", "tcp://[fd00::2]:22000")


@pytest.mark.parametrize("text, message", [
    ("lyon", "expected 'NAME DEVICE-ID"),
    (f"ly/on {RELAY_ID} tcp://h:22000", "bad peer name"),
    ("lyon ABC tcp://h:22000", "bad device ID"),
    (f"lyon {RELAY_ID} http://h:22000", "bad address"),
])
def test_a_bad_peer_says_what_is_wrong(text, message):
    with pytest.raises(ValueError, match=message):
        parse_peer(text)


def test_settings_from_a_relay_config(tmp_path):
    cfg = load(tmp_path, f"""[syncthing]
role = relay
packages_root = /srv/packages/
[devices]
peers = master {MASTER_ID} tcp://192.0.2.1:22000
[xmpp]
jid = relay-lyon@medulla.local/syncthing
""")
    settings = Settings.from_config(cfg)
    assert (settings.role, settings.name, settings.packages_root) == ("relay", "lyon",
                                                                      "/srv/packages")
    assert settings.peer_by_device(MASTER_ID).name == "master"
    assert not (settings.global_discovery or settings.relays or settings.local_discovery)


def test_the_role_must_be_said(tmp_path):
    with pytest.raises(config.ConfigError, match=r"\[syncthing\] role: required key"):
        load(tmp_path, "[syncthing]\n")


def test_a_peer_listed_twice_is_refused(tmp_path):
    cfg = load(tmp_path, f"[syncthing]\nrole = master\n[devices]\npeers = "
                         f"a {RELAY_ID} tcp://h:1, b {RELAY_ID} tcp://h:2\n")
    with pytest.raises(ValueError, match="listed twice"):
        Settings.from_config(cfg)


def test_the_node_name_comes_from_the_config_the_jid_or_the_host(tmp_path, monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "relay7.example.org")
    assert node_name(load(tmp_path, "[syncthing]\nrole = relay\nname = paris\n")) == "paris"
    assert node_name(load(tmp_path, "[syncthing]\nrole = relay\n[xmpp]\n"
                                    "jid = relay-lyon@d/syncthing\n")) == "lyon"
    assert node_name(load(tmp_path, "[syncthing]\nrole = relay\n")) == "relay7"


def config_xml(tmp_path, key="Xk3yFromSyncthing"):
    path = tmp_path / "config.xml"
    path.write_text(f'<configuration version="36"><gui enabled="true"><address>127.0.0.1:8384'
                    f'</address><apikey>{key}</apikey></gui></configuration>')
    return path


def test_the_api_key_file_comes_first_then_syncthing_config_xml(tmp_path):
    xml = config_xml(tmp_path)
    key_file = tmp_path / "api.key"
    text = f"[syncthing]\nrole = relay\napi_key_file = {key_file}\nconfig_xml = {xml}\n"
    assert read_api_key(load(tmp_path, text)) == "Xk3yFromSyncthing"
    key_file.write_text("from-the-file\n")
    key_file.chmod(0o600)
    assert read_api_key(load(tmp_path, text)) == "from-the-file"
    key_file.chmod(0o644)
    with pytest.raises(config.ConfigError, match="chmod 600"):
        read_api_key(load(tmp_path, text))


def test_no_key_anywhere_is_a_clear_error(tmp_path):
    text = f"[syncthing]\nrole = relay\napi_key_file = {tmp_path / 'none'}\n"
    with pytest.raises(config.ConfigError, match="api_key_file: cannot read secret file"):
        read_api_key(load(tmp_path, text))
    with pytest.raises(ValueError, match="no <gui><apikey>"):
        api_key_from_config_xml(str(config_xml(tmp_path, key="")))
    (tmp_path / "junk.xml").write_text("not xml")
    with pytest.raises(ValueError, match="is not Syncthing's config.xml"):
        api_key_from_config_xml(str(tmp_path / "junk.xml"))


def test_check_config_and_a_bad_file(tmp_path, capsys):
    good = tmp_path / "good.ini"
    good.write_text("[syncthing]\nrole = master\n")
    assert entry.main(["--config", str(good), "--check-config"]) == 0
    bad = tmp_path / "bad.ini"
    bad.write_text("[syncthing]\nrole = both\n[devices]\nglobal_discovry = yes\n")
    assert entry.main(["--config", str(bad)]) == 78
    err = capsys.readouterr().err
    assert "[syncthing] role: expected one of master, relay" in err
    assert "did you mean 'global_discovery'" in err
