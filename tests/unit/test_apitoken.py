"""The API token file: created private and atomically, reused, refused when too open."""

import os
import stat
import threading

import pytest

from medulla_appliance.master import apitoken
from medulla_appliance.master.apitoken import TokenFileError, ensure_token, read_token


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_first_start_creates_a_0600_token_in_a_new_0700_directory(tmp_path):
    path = tmp_path / "state" / "master" / "api-token"
    old = os.umask(0)  # even a permissive umask must not widen the file
    try:
        token = ensure_token(str(path))
    finally:
        os.umask(old)
    assert len(token) >= 43
    assert path.read_text() == token + "\n"
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert not [p for p in path.parent.iterdir() if p.name != "api-token"], "temp file left"


def test_restart_reuses_the_existing_token(tmp_path):
    path = str(tmp_path / "api-token")
    first = ensure_token(path)
    assert ensure_token(path, generate=lambda: "other") == first
    assert read_token(path) == first


def test_existing_token_is_stripped(tmp_path):
    path = tmp_path / "api-token"
    path.write_text("  s3cret-token\n\n")
    path.chmod(0o600)
    assert ensure_token(str(path)) == "s3cret-token"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_group_or_other_access_is_refused_naming_the_file(tmp_path, mode):
    path = tmp_path / "api-token"
    path.write_text("tok\n")
    path.chmod(mode)
    for call in (ensure_token, read_token):
        with pytest.raises(TokenFileError) as info:
            call(str(path))
        message = str(info.value)
        assert str(path) in message and "chmod 600" in message
        assert "\n" not in message


def test_empty_token_file_is_refused(tmp_path):
    path = tmp_path / "api-token"
    path.write_text("\n  \n")
    path.chmod(0o600)
    with pytest.raises(TokenFileError, match="is empty"):
        ensure_token(str(path))


def test_token_with_control_characters_is_refused(tmp_path):
    path = tmp_path / "api-token"
    path.write_bytes(b"abc\r\nX-Evil: 1\n")
    path.chmod(0o600)
    with pytest.raises(TokenFileError, match="control characters"):
        read_token(str(path))


def test_concurrent_first_starts_agree_on_one_token(tmp_path):
    path = str(tmp_path / "api-token")
    barrier = threading.Barrier(8)
    results, errors = [], []

    def start(n):
        barrier.wait()
        try:
            results.append(ensure_token(path, generate=lambda: f"token-{n}"))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(results)) == 1
    assert open(path).read().strip() == results[0]
    assert os.listdir(tmp_path) == ["api-token"]


def test_the_file_never_exists_without_its_content(tmp_path, monkeypatch):
    # Whatever instant another process looks, the token path is absent or complete:
    # the content is written before the name appears (link of a finished temp file).
    path = str(tmp_path / "api-token")
    seen = []
    real_link = os.link

    def spying_link(src, dst):
        seen.append((os.path.exists(dst), open(src).read(), _mode(src)))
        return real_link(src, dst)

    monkeypatch.setattr(apitoken.os, "link", spying_link)
    token = ensure_token(path)
    assert seen == [(False, token + "\n", 0o600)]


def test_client_without_permission_gets_a_hint(tmp_path, monkeypatch):
    path = tmp_path / "api-token"

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(apitoken.os, "open", denied)
    with pytest.raises(TokenFileError) as info:
        read_token(str(path))
    assert str(info.value).startswith(f"cannot read API token {path}: permission denied — "
                                      "run medullactl as root")


def test_missing_file_for_the_client_says_who_creates_it(tmp_path):
    with pytest.raises(TokenFileError, match="no such file.*medulla-master"):
        read_token(str(tmp_path / "absent"))


def test_directory_instead_of_file_is_refused(tmp_path):
    (tmp_path / "api-token").mkdir(mode=0o700)
    with pytest.raises(TokenFileError):
        ensure_token(str(tmp_path / "api-token"))
