"""Packages on disk (descriptor, sizes, SHA-256, markers) and the completion decisions."""

import hashlib
import json
import os

import pytest

from medulla_appliance.syncthing import packages
from medulla_appliance.syncthing.completion import (
    LocalCompletion,
    RemoteCompletion,
    held_by,
    pending_packages,
    rfc3339_ns,
)


def make_package(root, package_id, files, *, descriptor_files=None):
    """A package folder with ``files`` ({path: bytes}); the descriptor lists them (or
    ``descriptor_files``). Returns the descriptor's SHA-256."""
    folder = root / package_id
    for path, content in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(content)
    listed = descriptor_files if descriptor_files is not None else files
    descriptor = {"schema": 1, "id": package_id, "name": package_id, "version": "1",
                  "os": ["linux"], "sequences": {},
                  "files": [{"path": p, "size": len(c), "sha256": hashlib.sha256(c).hexdigest()}
                            for p, c in listed.items()]}
    raw = json.dumps(descriptor).encode()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "descriptor.json").write_bytes(raw)
    return hashlib.sha256(raw).hexdigest()


def test_a_package_matching_its_descriptor_is_complete(tmp_path):
    sha = make_package(tmp_path, "pkg", {"a.bin": b"a" * 3000, "sub/b.txt": b"b"})
    verified = packages.verify(str(tmp_path), "pkg")
    assert verified.complete and verified.descriptor_sha256 == sha
    assert (verified.files, verified.size) == (2, 3001)


@pytest.mark.parametrize("damage, problem", [
    (lambda f: (f / "a.bin").unlink(), "missing"),
    (lambda f: (f / "a.bin").write_bytes(b"a" * 10), "has 10 bytes"),
    (lambda f: (f / "a.bin").write_bytes(b"x" * 3000), "SHA-256 does not match"),
    (lambda f: (f / "descriptor.json").unlink(), "no descriptor.json"),
    (lambda f: (f / "descriptor.json").write_text("{not json"), "not UTF-8 JSON"),
])
def test_a_package_that_does_not_match_is_not_complete(tmp_path, damage, problem):
    make_package(tmp_path, "pkg", {"a.bin": b"a" * 3000})
    damage(tmp_path / "pkg")
    verified = packages.verify(str(tmp_path), "pkg")
    assert not verified.complete
    assert problem in verified.problem


def test_a_listed_file_that_leads_out_of_the_package_is_refused(tmp_path):
    (tmp_path / "secret").write_bytes(b"s")
    make_package(tmp_path, "pkg", {}, descriptor_files={"link": b"s"})
    os.symlink(tmp_path / "secret", tmp_path / "pkg" / "link")
    verified = packages.verify(str(tmp_path), "pkg")
    assert not verified.complete and "leads out" in verified.problem


def test_an_unchanged_package_is_not_hashed_again(tmp_path, monkeypatch):
    make_package(tmp_path, "pkg", {"a.bin": b"a" * 3000})
    first = packages.verify(str(tmp_path), "pkg")
    hashed = []
    real = packages._sha256
    monkeypatch.setattr(packages, "_sha256", lambda path, *a: hashed.append(path) or real(path))
    assert packages.verify(str(tmp_path), "pkg", first) is first
    assert hashed == []
    (tmp_path / "pkg" / "a.bin").unlink()
    (tmp_path / "pkg" / "a.bin").write_bytes(b"a" * 3000)  # a new file (inode), same bytes
    assert packages.verify(str(tmp_path), "pkg", first).complete
    assert len(hashed) == 1


def test_scan_lists_package_folders_only_and_forgets_deleted_ones(tmp_path):
    make_package(tmp_path, "one", {"a": b"1"})
    make_package(tmp_path, "two", {"a": b"2"})
    for odd in (".complete", ".incoming-three", ".stfolder", "bad name"):
        (tmp_path / odd).mkdir()
    (tmp_path / "README").write_text("a file, not a package")
    cache = {}
    found, markers = packages.scan(str(tmp_path), cache)
    assert sorted(found) == ["one", "two"] and sorted(cache) == ["one", "two"]
    assert markers == {}
    for path in (tmp_path / "two").iterdir():
        path.unlink()
    (tmp_path / "two").rmdir()
    found, _ = packages.scan(str(tmp_path), cache)
    assert sorted(found) == sorted(cache) == ["one"]


def test_markers_are_written_atomically_read_back_and_removed(tmp_path):
    make_package(tmp_path, "pkg", {"a": b"1"})
    verified = packages.verify(str(tmp_path), "pkg")
    packages.write_marker(str(tmp_path), verified)
    marker = tmp_path / ".complete" / "pkg"
    assert json.loads(marker.read_text())["descriptor_sha256"] == verified.descriptor_sha256
    assert [p.name for p in marker.parent.iterdir()] == ["pkg"]  # no temporary file left
    assert packages.read_markers(str(tmp_path)) == {"pkg": verified.descriptor_sha256}
    (tmp_path / ".complete" / "old").write_text("written by an older version")
    assert packages.read_markers(str(tmp_path))["old"] == ""
    assert packages.remove_marker(str(tmp_path), "pkg") is True
    assert packages.remove_marker(str(tmp_path), "pkg") is False
    assert not marker.exists()


# -- decisions -----------------------------------------------------------------------------
def ok(package_id, sha):
    return packages.Verified(package_id, sha, ("fp",), None, 1, 1)


def bad(package_id, problem="SHA-256 does not match"):
    return packages.Verified(package_id, None, ("fp",), problem)


def test_complete_only_when_syncthing_needs_nothing_and_checksums_match():
    local = LocalCompletion()
    changes = local.decide({"a": ok("a", "s1"), "b": ok("b", "s2"), "c": bad("c")},
                           pending={"b"}, markers={})
    assert set(changes.write) == {"a"} and changes.completed == {"a": "s1"}
    assert not changes.remove and not changes.gone
    assert local.complete == {"a": "s1"}


def test_a_package_syncthing_starts_updating_loses_its_marker():
    local = LocalCompletion({"a": "s1"})
    changes = local.decide({"a": ok("a", "s1")}, pending={"a"}, markers={"a": "s1"})
    assert changes.remove == {"a"} and changes.gone == {"a": "s1"} and not changes.write


def test_a_changed_package_is_gone_then_complete_with_its_new_descriptor():
    local = LocalCompletion({"a": "s1"})
    changes = local.decide({"a": ok("a", "s2")}, pending=set(), markers={"a": "s1"})
    assert changes.remove == {"a"} and set(changes.write) == {"a"}
    assert changes.gone == {"a": "s1"} and changes.completed == {"a": "s2"}


def test_a_deleted_package_and_a_stray_marker_are_removed():
    local = LocalCompletion({"a": "s1"})
    changes = local.decide({}, pending=set(), markers={"a": "s1", "zombie": "s9"})
    assert changes.remove == {"a", "zombie"} and changes.gone == {"a": "s1"}


def test_a_package_touched_meanwhile_gets_no_marker_until_the_next_look():
    local = LocalCompletion()
    changes = local.decide({"a": ok("a", "s1")}, pending=set(), markers={},
                           may_write=lambda pid: False)
    assert not changes.write and not changes.completed and local.complete == {}
    changes = local.decide({"a": ok("a", "s1")}, pending=set(), markers={})
    assert changes.completed == {"a": "s1"}


def test_markers_already_right_are_announced_once_and_not_rewritten():
    local = LocalCompletion()
    first = local.decide({"a": ok("a", "s1")}, pending=set(), markers={"a": "s1"})
    assert not first.write and first.completed == {"a": "s1"}
    again = local.decide({"a": ok("a", "s1")}, pending=set(), markers={"a": "s1"})
    assert not again.write and not again.completed and not again.remove


def test_withdraw_forgets_a_package_at_once():
    local = LocalCompletion({"a": "s1"})
    assert local.withdraw("a") == "s1" and local.withdraw("a") is None


def test_remote_completion_per_relay():
    remote = RemoteCompletion()
    done, gone = remote.decide("lyon", {"a": "s1", "b": "s2", "c": "s3"},
                               held={"a", "b"}, pending={"b"})
    assert done == {"a": "s1"} and gone == {}
    done, gone = remote.decide("lyon", {"a": "s1b", "b": "s2"}, held={"a", "b"},
                               pending=set())
    assert done == {"a": "s1b", "b": "s2"} and gone == {"a": "s1"}
    assert remote.forget("lyon") == {"a": "s1b", "b": "s2"}


def test_pending_packages_are_the_first_path_component_of_needed_items():
    items = [{"name": "pkg2"}, {"name": "pkg2/big.bin"}, {"name": "pkg3/sub/x", "deleted": True}]
    assert pending_packages(items) == {"pkg2", "pkg3"}


RELAY = "YPDKACQ-DJ5TONZ-4ZOLBDY-ZNMJYSK-O6IL4ER-D32AQID-HAJARTL-3LRCTA7"
STAMP = "2026-11-23T11:15:38.951263963Z"


def record(size=10, modified=STAMP, holders=((RELAY, False),), **glob):
    return {"global": {"size": size, "modified": modified, "deleted": False, **glob},
            "availability": [{"id": d, "fromTemporary": t} for d, t in holders]}


def test_a_relay_holds_a_file_when_it_has_its_global_version_at_our_size_and_time():
    mtime = rfc3339_ns(STAMP)
    assert held_by(record(), RELAY, 10, mtime)
    assert not held_by(record(), RELAY, 11, mtime)  # another version than ours
    assert not held_by(record(), RELAY, 10, mtime + 1)  # ours is not scanned yet
    assert not held_by(record(holders=()), RELAY, 10, mtime)
    assert not held_by(record(holders=((RELAY, True),)), RELAY, 10, mtime)  # a temp copy
    assert not held_by(record(deleted=True), RELAY, 10, mtime)
    assert held_by(record(modified="unreadable"), RELAY, 10, mtime)


def test_syncthing_times_are_read_to_the_nanosecond_in_any_zone():
    assert rfc3339_ns("2026-11-23T11:15:38.951263963Z") == 1795432538951263963
    assert rfc3339_ns("2026-11-23T12:15:38.951263963+01:00") == 1795432538951263963
    assert rfc3339_ns("2026-11-23T11:15:38Z") == 1795432538000000000
    assert rfc3339_ns("yesterday") is None and rfc3339_ns(None) is None


def test_verification_gives_up_when_the_daemon_stops(tmp_path):
    make_package(tmp_path, "pkg", {"a.bin": b"a" * 3000})
    with pytest.raises(packages.Interrupted):
        packages.scan(str(tmp_path), {}, interrupted=lambda: True)


def test_a_package_with_a_new_version_arriving_is_not_complete(tmp_path):
    # The old files still match the old descriptor, but Syncthing is writing a new
    # version beside them: offering the old one now could hand an agent half of each.
    make_package(tmp_path, "pkg", {"a.bin": b"a" * 3000, "sub/b.txt": b"b"})
    cached = packages.verify(str(tmp_path), "pkg")
    assert cached.complete
    (tmp_path / "pkg" / "sub" / ".syncthing.b.txt.tmp").write_bytes(b"new")
    verified = packages.verify(str(tmp_path), "pkg", cached)
    assert not verified.complete and "still writing" in verified.problem
    (tmp_path / "pkg" / "sub" / ".syncthing.b.txt.tmp").unlink()
    assert packages.verify(str(tmp_path), "pkg", cached).complete
