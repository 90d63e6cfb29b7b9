"""packages.store: packages appear whole or not at all, checksums are checked on the way
in and on demand, and no path (or symbolic link) leads out of a package."""

import hashlib
import json
import os
import shutil

import pytest

from medulla_appliance.packages.descriptor import (
    DescriptorError,
    canonical_descriptor_bytes,
    descriptor_sha256,
)
from medulla_appliance.packages.store import (
    BadFile,
    PackageExists,
    PackageNotFound,
    PackageStore,
    StoreError,
)

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "data", "packages", "native-hello")


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "src"
    shutil.copytree(SAMPLE, folder)
    return folder


@pytest.fixture
def store(tmp_path):
    return PackageStore(str(tmp_path / "store"))


def descriptor_of(folder):
    return json.loads((folder / "descriptor.json").read_text())


def write_descriptor(folder, data):
    (folder / "descriptor.json").write_text(json.dumps(data))


def entries(store):
    return sorted(os.listdir(store.root))


def test_add_copies_the_listed_files_and_the_exact_descriptor(store, src):
    (src / "not-listed.txt").write_text("stays behind")
    d = store.add_from_folder(str(src))
    assert d.id == "native-hello" and store.list() == ["native-hello"]
    folder = os.path.join(store.root, "native-hello")
    assert sorted(os.listdir(folder)) == ["data", "descriptor.json", "hello.sh"]
    raw = (src / "descriptor.json").read_bytes()
    assert store.descriptor_bytes("native-hello") == raw
    assert store.descriptor_sha256("native-hello") == hashlib.sha256(raw).hexdigest()
    assert store.get("native-hello") == d
    assert store.verify("native-hello") == []
    assert entries(store) == ["native-hello"]          # nothing left in .incoming-*


def test_descriptor_given_as_bytes_is_kept_byte_for_byte(store, src):
    raw = b"\n\n" + (src / "descriptor.json").read_bytes()
    (src / "descriptor.json").unlink()
    store.add_from_folder(str(src), raw)
    assert store.descriptor_sha256("native-hello") == descriptor_sha256(raw)


def test_descriptor_given_as_a_dict_is_stored_canonical(store, src):
    data = descriptor_of(src)
    (src / "descriptor.json").unlink()
    d = store.add_from_folder(str(src), data)
    assert store.get("native-hello") == d
    assert store.descriptor_bytes("native-hello") == canonical_descriptor_bytes(d)


def test_an_invalid_descriptor_is_refused_and_nothing_is_written(store, src):
    data = descriptor_of(src)
    data["files"][0]["path"] = "../../etc/cron.d/evil"
    write_descriptor(src, data)
    with pytest.raises(DescriptorError, match=r"files\[0\].path: '..' component"):
        store.add_from_folder(str(src))
    assert entries(store) == []


def test_a_checksum_mismatch_is_refused_and_leaves_nothing(store, src):
    (src / "data" / "message.txt").write_text("Hello from a tampered package.")
    with pytest.raises(StoreError, match="data/message.txt: .* the descriptor says"):
        store.add_from_folder(str(src))
    assert entries(store) == [] and store.list() == []


def test_same_size_other_content_is_caught_by_the_hash(store, src):
    message = src / "data" / "message.txt"
    message.write_bytes(message.read_bytes().upper())
    with pytest.raises(StoreError, match="data/message.txt: SHA-256 .* the descriptor says"):
        store.add_from_folder(str(src))
    assert entries(store) == []


def test_a_larger_file_is_refused_without_reading_it_all(store, src):
    with open(src / "hello.sh", "ab") as f:
        f.write(b"x" * (4 * 1024 * 1024))
    with pytest.raises(StoreError, match="hello.sh: larger than the 160 bytes"):
        store.add_from_folder(str(src))


def test_a_missing_file_is_refused(store, src):
    (src / "hello.sh").unlink()
    with pytest.raises(StoreError, match="hello.sh: missing"):
        store.add_from_folder(str(src))
    assert entries(store) == []


def test_a_symlink_in_the_source_is_refused_even_with_the_right_checksum(store, src, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0\n")
    data = descriptor_of(src)
    data["files"].append({"path": "innocent.txt", "size": secret.stat().st_size,
                          "sha256": hashlib.sha256(secret.read_bytes()).hexdigest()})
    write_descriptor(src, data)
    os.symlink(secret, src / "innocent.txt")
    with pytest.raises(StoreError, match="innocent.txt: a symbolic link is in the way"):
        store.add_from_folder(str(src))
    assert entries(store) == []


def test_a_symlinked_folder_in_the_source_is_refused(store, src, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.move(str(src / "data"), outside / "data")
    os.symlink(outside / "data", src / "data")
    with pytest.raises(StoreError, match="data/message.txt: a symbolic link"):
        store.add_from_folder(str(src))


def test_an_existing_package_is_kept_unless_replace(store, src):
    store.add_from_folder(str(src))
    with pytest.raises(PackageExists):
        store.add_from_folder(str(src))
    data = descriptor_of(src)
    data["version"] = "2.0"
    write_descriptor(src, data)
    assert store.add_from_folder(str(src), replace=True).version == "2.0"
    assert store.get("native-hello").version == "2.0"
    assert entries(store) == ["native-hello"]


def test_a_failed_replace_leaves_the_old_package_whole(store, src):
    store.add_from_folder(str(src))
    before = store.descriptor_bytes("native-hello")
    data = descriptor_of(src)
    data["version"] = "2.0"
    write_descriptor(src, data)
    (src / "hello.sh").write_text("echo tampered\n")
    with pytest.raises(StoreError):
        store.add_from_folder(str(src), replace=True)
    assert store.descriptor_bytes("native-hello") == before
    assert store.verify("native-hello") == []
    assert entries(store) == ["native-hello"]


def test_path_of_joins_safely(store, src):
    store.add_from_folder(str(src))
    path = store.path_of("native-hello", "data/message.txt")
    assert path == os.path.join(store.root, "native-hello", "data", "message.txt")
    for bad in ("../other/descriptor.json", "/etc/passwd", "data/../../x", "a\\b", "",
                "descriptor.json"):
        with pytest.raises(StoreError):
            store.path_of("native-hello", bad)
    with pytest.raises(PackageNotFound):
        store.path_of("../native-hello", "hello.sh")
    with pytest.raises(PackageNotFound):
        store.path_of("absent", "hello.sh")


def test_path_of_refuses_a_symlink_leading_out(store, src, tmp_path):
    store.add_from_folder(str(src))
    folder = os.path.join(store.root, "native-hello")
    os.symlink("/etc", os.path.join(folder, "etc"))
    os.symlink(os.path.join(folder, "hello.sh"), os.path.join(folder, "alias.sh"))
    with pytest.raises(StoreError, match="leads out of the package"):
        store.path_of("native-hello", "etc/passwd")
    assert store.path_of("native-hello", "alias.sh").endswith("alias.sh")


def test_verify_finds_corrupted_missing_and_replaced_files(store, src, tmp_path):
    store.add_from_folder(str(src))
    folder = os.path.join(store.root, "native-hello")
    with open(os.path.join(folder, "hello.sh"), "r+b") as f:
        f.write(b"#!/bin/bash")                       # same size, other bytes
    assert store.verify("native-hello") == [
        BadFile("hello.sh", "SHA-256 %s, expected %s" % (
            hashlib.sha256(open(os.path.join(folder, "hello.sh"), "rb").read()).hexdigest(),
            store.get("native-hello").files[0].sha256))]
    os.unlink(os.path.join(folder, "data", "message.txt"))
    os.symlink(tmp_path / "src" / "data" / "message.txt",
               os.path.join(folder, "data", "message.txt"))
    bad = dict(store.verify("native-hello"))
    assert bad["data/message.txt"] == "symbolic link in its path"
    os.unlink(os.path.join(folder, "data", "message.txt"))
    assert dict(store.verify("native-hello"))["data/message.txt"] == "missing"
    with open(os.path.join(folder, "data", "message.txt"), "w") as f:
        f.write("short")
    assert dict(store.verify("native-hello"))["data/message.txt"] == "size 5, expected 29"


def test_remove_and_not_found(store, src):
    store.add_from_folder(str(src))
    store.remove("native-hello")
    assert store.list() == [] and entries(store) == []
    with pytest.raises(PackageNotFound):
        store.remove("native-hello")
    with pytest.raises(PackageNotFound):
        store.get("native-hello")
    with pytest.raises(PackageNotFound):
        store.get("../../etc")


def test_get_refuses_a_descriptor_naming_another_package(store, src):
    store.add_from_folder(str(src))
    os.rename(os.path.join(store.root, "native-hello"), os.path.join(store.root, "other"))
    with pytest.raises(StoreError, match="its descriptor says id 'native-hello'"):
        store.get("other")


def test_list_ignores_leftovers_and_cleanup_removes_old_ones(store, src):
    store.add_from_folder(str(src))
    os.mkdir(os.path.join(store.root, ".incoming-native-hello-abc"))
    os.mkdir(os.path.join(store.root, "no-descriptor"))
    assert store.list() == ["native-hello"]
    assert store.cleanup(max_age=3600) == []
    assert store.cleanup(max_age=0, now=lambda: 2 ** 40) == [".incoming-native-hello-abc"]
