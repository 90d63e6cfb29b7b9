"""The INI files we ship document exactly what the code accepts."""

import pathlib

import pytest

from medulla_appliance.core import config
from medulla_appliance.etc_files import ETC_FILES

ETC = pathlib.Path(__file__).resolve().parents[2] / "etc"


@pytest.mark.parametrize("name", sorted(ETC_FILES))
def test_shipped_ini_matches_the_schema(name):
    assert (ETC / name).read_text() == ETC_FILES[name].defaults_ini(), (
        "etc/%s is stale: run scripts/gen-etc" % name)


def test_shipped_master_ini_loads_with_the_defaults():
    cfg = config.load(str(ETC / "master.ini"), ETC_FILES["master.ini"])
    assert cfg["api"]["listen"] == "tcp:7080:interface=127.0.0.1"
    assert "00:00:00:00:00:00" in cfg["registry"]["blacklisted_mac_addresses"]


def test_shipped_agent_ini_names_what_the_admin_must_set(tmp_path):
    with pytest.raises(config.ConfigError) as err:
        config.load(str(ETC / "agentconf.ini"), ETC_FILES["agentconf.ini"])
    text = str(err.value)
    for key in ("server", "enrolment_key", "master_public_key"):
        assert key in text


def readme_rows():
    """(section, key) pairs of the README's configuration tables."""
    rows = set()
    for line in (ETC.parent / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) >= 3:
            rows.update((cells[0], key.strip()) for key in cells[1].split(","))
    return rows


@pytest.mark.parametrize("name", sorted(ETC_FILES))
def test_readme_documents_every_key(name):
    rows = readme_rows()
    missing = [(section, key) for section, keys in ETC_FILES[name].sections.items()
               for key in keys if (section, key) not in rows]
    assert not missing, "README.md does not document %s of %s" % (missing, name)
