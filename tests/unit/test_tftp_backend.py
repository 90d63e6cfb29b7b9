"""The safe root: nothing outside it can be read, whatever the name; generated files."""

import io
import os

import pytest

from medulla_appliance.pxe.autoexec import AutoexecScript, arp_mac
from medulla_appliance.pxe.tftp.backend import (
    AccessViolation,
    BackendError,
    ClientInfo,
    FileNotFound,
    Generators,
    NetasciiReader,
    SafeRoot,
    check_name,
)

CLIENT = ClientInfo("10.0.0.5", 2000, "10.0.0.1")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "tftpboot"
    (root / "bootloader-uefi64").mkdir(parents=True)
    (root / "bootloader-uefi64" / "ipxe.efi").write_bytes(b"EFI" * 100)
    (root / "readme.txt").write_text("hello\n")
    (tmp_path / "secret").write_text("top secret")
    (root / "inside-link").symlink_to("bootloader-uefi64/ipxe.efi")
    (root / "outside-link").symlink_to(tmp_path / "secret")
    (root / "outside-dir").symlink_to(tmp_path)
    (root / "dangling").symlink_to("nothing-here")
    (root / "dangling-out").symlink_to(tmp_path / "nothing-here")
    os.mkfifo(root / "fifo")
    return root


def read_all(source):
    try:
        return source.read(10 ** 6)
    finally:
        source.close()


def test_files_under_the_root_are_served_with_their_size(tree):
    source = SafeRoot(str(tree)).open_read("bootloader-uefi64/ipxe.efi", CLIENT)
    assert source.size == 300
    assert read_all(source) == b"EFI" * 100


@pytest.mark.parametrize("name", ["./readme.txt", "bootloader-uefi64//ipxe.efi",
                                  "bootloader-uefi64/./ipxe.efi"])
def test_harmless_spellings_reach_the_same_file(tree, name):
    source = SafeRoot(str(tree)).open_read(name, CLIENT)
    assert source.size in (6, 300)
    source.close()


def test_symlink_staying_inside_is_followed(tree):
    assert read_all(SafeRoot(str(tree)).open_read("inside-link", CLIENT)) == b"EFI" * 100


@pytest.mark.parametrize("name, reason", [
    ("../secret", "parent-reference"),
    ("bootloader-uefi64/../../secret", "parent-reference"),
    ("..", "parent-reference"),
    ("/etc/passwd", "absolute-path"),
    ("//etc/passwd", "absolute-path"),
    ("/../etc/passwd", "parent-reference"),
    ("..\\secret", "parent-reference"),
    ("bootloader-uefi64\\..\\..\\secret", "parent-reference"),
    ("C:\\Windows\\win.ini", "backslash"),
    ("boot\\x64\\wdsnbp.com", "backslash"),
    ("\\Boot\\BCD", "backslash"),
    ("readme.txt\0.png", "nul-byte"),
    ("readme\n.txt", "control-char"),
    ("x" * 2000, "name-too-long"),
    ("outside-link", "symlink-escape"),
    ("outside-dir/secret", "symlink-escape"),
    ("dangling-out", "symlink-escape"),
    ("fifo", "not-a-file"),
    ("bootloader-uefi64", "not-a-file"),
])
def test_escapes_and_odd_files_are_refused_with_a_reason(tree, name, reason):
    with pytest.raises(AccessViolation) as err:
        SafeRoot(str(tree)).open_read(name, CLIENT)
    assert err.value.reason == reason
    assert err.value.code == 2


@pytest.mark.parametrize("name", ["missing.bin", "dangling", "bootloader-uefi64/none", "./"])
def test_missing_files_are_not_found(tree, name):
    with pytest.raises(FileNotFound) as err:
        SafeRoot(str(tree)).open_read(name, CLIENT)
    assert err.value.code == 1


def test_unreadable_file_is_an_access_violation(tree, monkeypatch):
    def denied(*args, **kw):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "open", denied)  # root reads everything; pretend we are not
    with pytest.raises(AccessViolation) as err:
        SafeRoot(str(tree)).open_read("readme.txt", CLIENT)
    assert err.value.reason == "permission"


def test_the_root_itself_may_be_a_symlink(tmp_path, tree):
    (tmp_path / "alias").symlink_to(tree)
    assert read_all(SafeRoot(str(tmp_path / "alias")).open_read("readme.txt", CLIENT)) == \
        b"hello\n"


def test_check_name_normalizes():
    assert check_name("a//b/./c") == "a/b/c"


def test_generated_file_by_name_in_any_folder_and_real_files_win(tree):
    generators = Generators()
    generators.register("autoexec.ipxe", lambda client, path: ("%s %s" % (
        client.host, path)).encode())
    generators.register("exact/only.txt", lambda client, path: b"exact")
    root = SafeRoot(str(tree), generators)
    assert read_all(root.open_read("bootloader-uefi64/autoexec.ipxe", CLIENT)) == \
        b"10.0.0.5 bootloader-uefi64/autoexec.ipxe"
    assert read_all(root.open_read("exact/only.txt", CLIENT)) == b"exact"
    with pytest.raises(FileNotFound):
        root.open_read("other/only.txt", CLIENT)
    (tree / "autoexec.ipxe").write_bytes(b"admin's own")
    assert read_all(root.open_read("autoexec.ipxe", CLIENT)) == b"admin's own"


def test_generated_names_still_go_through_the_checks(tree):
    generators = Generators()
    generators.register("autoexec.ipxe", lambda client, path: b"x")
    with pytest.raises(AccessViolation):
        SafeRoot(str(tree), generators).open_read("../autoexec.ipxe", CLIENT)


def test_netascii_converts_line_ends_across_any_chunking():
    text = b"line1\nline2\r\nbare\r" * 50
    expected = text.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
    for n in (1, 2, 3, 7, 512):
        reader = NetasciiReader(io.BytesIO(text))
        out = b""
        while True:
            chunk = reader.read(n)
            out += chunk
            if len(chunk) < n:
                break
        assert out == expected


def test_autoexec_chains_to_the_menu_with_mac_uuid_and_server():
    make = AutoexecScript("http://{server}/medulla/bootmenu",
                          mac_lookup=lambda host: "54:bf:64:5c:77:25",
                          route=lambda host: "10.104.1.20")
    script = make(ClientInfo("10.104.108.113", 2000), "bootloader-uefi64/autoexec.ipxe")
    assert script.startswith(b"#!ipxe\n")
    assert (b"chain --autofree http://10.104.1.20/medulla/bootmenu?mac=54:bf:64:5c:77:25"
            b"&uuid=${uuid}&srv=10.104.1.20 ") in script


def test_autoexec_lets_ipxe_fill_the_mac_when_we_do_not_know_it():
    make = AutoexecScript("http://menu.example/boot?site=2", mac_lookup=lambda host: None)
    script = make(ClientInfo("fd00::5", 2000, "fd00::1"), "autoexec.ipxe").decode()
    assert "http://menu.example/boot?site=2&mac=${mac}&uuid=${uuid}&srv=fd00::1" in script


def test_autoexec_brackets_an_ipv6_server_in_the_url():
    make = AutoexecScript("http://{server}/m", mac_lookup=lambda host: None)
    script = make(ClientInfo("fd00::5", 2000, "fd00::1"), "autoexec.ipxe").decode()
    assert "http://[fd00::1]/m?" in script


def test_arp_table_lookup(tmp_path):
    table = tmp_path / "arp"
    table.write_text(
        "IP address       HW type     Flags       HW address            Mask     Device\n"
        "10.0.0.5         0x1         0x2         54:bf:64:5c:77:25     *        eth0\n"
        "10.0.0.6         0x1         0x0         00:00:00:00:00:00     *        eth0\n")
    assert arp_mac("10.0.0.5", str(table)) == "54:bf:64:5c:77:25"
    assert arp_mac("10.0.0.6", str(table)) is None
    assert arp_mac("10.0.0.7", str(table)) is None
    assert arp_mac("10.0.0.5", str(tmp_path / "none")) is None


def test_running_out_of_descriptors_is_our_error_not_the_clients(tree, monkeypatch):
    def exhausted(*args, **kw):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "open", exhausted)
    with pytest.raises(BackendError) as err:
        SafeRoot(str(tree)).open_read("readme.txt", CLIENT)
    assert err.value.code == 0 and err.value.reason == "cannot-open"
    assert not isinstance(err.value, (AccessViolation, FileNotFound))
