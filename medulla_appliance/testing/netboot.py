"""A PXE network boot on one machine: qemu's iPXE ROM, a site DHCP server and medulla-pxe.

``NetbootLab`` builds two network namespaces joined like two hosts on one switch:

- *site*: a bridge ``br0`` (192.0.2.2/24, medulla-pxe's address) with the VM's tap device
  ``tap0`` and one end of a veth pair in it;
- *dhcp*: the other end, ``eth0`` (192.0.2.1/24 and 2001:db8:1::1/64), where dnsmasq plays
  the site's existing DHCP server, as in the FAQ's "I already have a PXE server".

Every process runs inside one of them (``ip netns exec``), is started by this class and
stopped by its PID; the namespaces (and so the bridge, tap and veth) are deleted at the
end. The addresses are documentation ranges that exist only inside these namespaces.

When the test also runs an XMPP server and the master (on this host's loopback, where the
harnesses in ``testing/`` run them), :meth:`NetbootLab.add_uplink` joins the site host to
this host by one more veth pair, a /30 of 198.51.100.0/24: medulla-pxe's XMPP link
reaches prosody there, and everything else (the master's API, medullactl) stays on
loopback. Deleting the site namespace deletes that pair too.

dnsmasq also sends IPv6 router advertisements (``--enable-ra``, ``ra-only``): iPXE
configures IPv6 beside DHCPv4 and, with no router answering, waits about 13 s for one
before it boots. One RA ends that wait, so a boot takes seconds instead. tftpd-hpa and
the ROM log nothing we could read, so the proof of each step comes from the logs of our
own processes: dnsmasq's ``--log-dhcp`` file, medulla-pxe's log, qemu's serial console.
"""

import os
import re
import subprocess
import sys
import time
import zlib
from pathlib import Path

from .processes import stop_process, tail

SITE_ADDRESS = "192.0.2.2"
DHCP_ADDRESS = "192.0.2.1"
DHCP_RANGE = "192.0.2.100,192.0.2.150,255.255.255.0,10m"
RA_ADDRESS, RA_PREFIX = "2001:db8:1::1/64", "2001:db8:1::"
QEMU = "qemu-system-x86_64"
# iPXE for virtio-net from Debian's ipxe-qemu: the ROM qemu loads for virtio-net-pci by
# itself. Checked, not passed: with an explicit romfile= (this one or pxe-virtio.rom),
# qemu 7.2 here never offers the card as a boot device ("No bootable device").
NIC_ROM = "/usr/lib/ipxe/qemu/efi-virtio.rom"
UPLINK_NETWORK = "198.51.100.%d"    # TEST-NET-2, cut into /30s: one per lab
STOP_TIMEOUT = 10.0
TOOLS = ("ip", "dnsmasq", QEMU)


def missing_tools() -> list[str]:
    """What the network-boot tests need and this machine lacks (scripts/install-deps)."""
    missing = [tool for tool in TOOLS
               if not any(os.access(os.path.join(d, tool), os.X_OK)
                          for d in ("/usr/bin", "/usr/sbin", "/bin", "/sbin"))]
    if not os.path.exists(NIC_ROM):
        missing.append(NIC_ROM + " (ipxe-qemu)")
    if os.geteuid() != 0:
        missing.append("root (network namespaces and tap devices)")
    return missing


def wait_for(what: str, check, timeout: float, logs=()) -> object:
    """Poll ``check()`` until it returns something true; fail with the logs' tails."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            shown = "\n".join("--- %s ---\n%s" % (p, tail(Path(p), 25)) for p in logs)
            raise AssertionError("timed out after %.0fs waiting for %s\n%s"
                                 % (timeout, what, shown))
        time.sleep(0.2)


def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").replace("\r", "")
    except FileNotFoundError:
        return ""


class NetbootLab:
    """Two namespaces, a bridge, a tap and a veth; processes started in them; teardown."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        tag = "%d-%d" % (os.getpid(), time.monotonic_ns() % 100000)
        self.site = "mdl-nb-site-" + tag
        self.dhcp = "mdl-nb-dhcp-" + tag
        self.processes = []
        self.created = []
        # An uplink /30 of its own, so that two labs at once do not share an address.
        self.uplink_subnet = 4 * (zlib.crc32(tag.encode()) % 64)
        self.uplink_name = "mdlup%08x" % zlib.crc32(tag.encode())  # at most 15 chars
        self.uplink = None
        self.vm = None

    def _ip(self, *args):
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    def create(self) -> "NetbootLab":
        self.workdir.mkdir(parents=True, exist_ok=True)
        for ns in (self.site, self.dhcp):
            self._ip("netns", "add", ns)
            self.created.append(ns)
            self._ip("-n", ns, "link", "set", "lo", "up")
        site, dhcp = ("-n", self.site), ("-n", self.dhcp)
        self._ip(*site, "link", "add", "br0", "type", "bridge")
        self._ip(*site, "tuntap", "add", "dev", "tap0", "mode", "tap")
        self._ip(*site, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0",
                 "netns", self.dhcp)
        for port in ("tap0", "veth0"):
            self._ip(*site, "link", "set", port, "master", "br0")
        self._ip(*site, "addr", "add", SITE_ADDRESS + "/24", "dev", "br0")
        self._ip(*dhcp, "addr", "add", DHCP_ADDRESS + "/24", "dev", "eth0")
        self._ip(*dhcp, "addr", "add", RA_ADDRESS, "dev", "eth0", "nodad")
        for link in ("br0", "tap0", "veth0"):
            self._ip(*site, "link", "set", link, "up")
        self._ip(*dhcp, "link", "set", "eth0", "up")
        return self

    def add_uplink(self) -> tuple[str, str]:
        """A veth pair from this host (``mdlup...``) to the site host (``uplink0``);
        returns (this host's address, the site's)."""
        here = UPLINK_NETWORK % (self.uplink_subnet + 1)
        there = UPLINK_NETWORK % (self.uplink_subnet + 2)
        self._ip("link", "add", self.uplink_name, "type", "veth", "peer", "name", "uplink0",
                 "netns", self.site)
        self.uplink = self.uplink_name
        self._ip("addr", "add", here + "/30", "dev", self.uplink_name)
        self._ip("-n", self.site, "addr", "add", there + "/30", "dev", "uplink0")
        self._ip("link", "set", self.uplink_name, "up")
        self._ip("-n", self.site, "link", "set", "uplink0", "up")
        return here, there

    def spawn(self, ns: str, argv: list, log_name: str) -> subprocess.Popen:
        """Start ``argv`` in namespace ``ns``, output to ``workdir/log_name``."""
        log = open(self.workdir / log_name, "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("NOTIFY_SOCKET", None)
        try:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env)
        finally:
            log.close()
        self.processes.append(proc)
        return proc

    def destroy(self) -> None:
        """Stop every process we started (by PID, newest first), then delete the namespaces."""
        while self.processes:
            stop_process(self.processes.pop(), STOP_TIMEOUT)
        if self.uplink is not None:  # gone with the site namespace anyway; made sure of
            subprocess.run(["ip", "link", "del", self.uplink], check=False,
                           capture_output=True)
            self.uplink = None
        while self.created:
            subprocess.run(["ip", "netns", "del", self.created.pop()], check=False,
                           capture_output=True)

    def __enter__(self):
        try:
            return self.create()
        except BaseException:
            self.destroy()
            raise

    def __exit__(self, *exc):
        self.destroy()

    # -- the site's DHCP server ------------------------------------------------------------

    def start_dnsmasq(self, boot_options=()) -> Path:
        """dnsmasq on the dhcp host: addresses and router adverts, plus ``boot_options``.

        Without boot options it is the address-only DHCP server proxyDHCP sits beside.
        Returns its log (``--log-dhcp``: every option it sent).
        """
        log = self.workdir / "dnsmasq.log"
        argv = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--port=0",
                "--user=root", "--interface=eth0", "--bind-interfaces", "--pid-file=",
                "--dhcp-range=" + DHCP_RANGE, "--enable-ra",
                "--dhcp-range=%s,ra-only" % RA_PREFIX,
                "--dhcp-leasefile=%s" % (self.workdir / "dnsmasq.leases"),
                "--log-dhcp", "--log-facility=%s" % log, *boot_options]
        proc = self.spawn(self.dhcp, argv, "dnsmasq.out")
        wait_for("dnsmasq to start", lambda: proc.poll() is not None or
                 "router advertisement enabled" in read(log), 15,
                 [log, self.workdir / "dnsmasq.out"])
        if proc.poll() is not None:
            raise RuntimeError("dnsmasq exited:\n" + read(self.workdir / "dnsmasq.out"))
        return log

    # -- medulla-pxe ------------------------------------------------------------------------

    def start_medulla_pxe(self, sections: dict, ready_lines: list) -> Path:
        """``python -m medulla_appliance.pxe`` on the site host; returns its log.

        ``sections`` is ``{section: {key: value}}`` written to its pxe.ini; it is ready
        when its log shows every line of ``ready_lines``.
        """
        config = self.workdir / "pxe.ini"
        config.write_text("".join(
            "[%s]\n%s" % (name, "".join("%s = %s\n" % item for item in keys.items()))
            for name, keys in sections.items()))
        log = self.workdir / "medulla-pxe.log"
        proc = self.spawn(self.site, [sys.executable, "-m", "medulla_appliance.pxe",
                                      "--config", str(config)], log.name)
        wait_for("medulla-pxe to start", lambda: proc.poll() is not None or
                 all(line in read(log) for line in ready_lines), 30, [log])
        if proc.poll() is not None:
            raise RuntimeError("medulla-pxe exited:\n" + read(log))
        return log

    # -- the machine ------------------------------------------------------------------------

    def boot_vm(self, mac: str, uuid: str, boot: int = 1) -> Path:
        """qemu (TCG, 32 MiB, no disk) booting from its iPXE NIC ROM on tap0; the serial
        console goes to a file, which is returned (one file per ``boot`` of a machine)."""
        console = self.workdir / ("console-%s-%d.log" % (mac.replace(":", ""), boot))
        argv = [QEMU, "-accel", "tcg", "-m", "32", "-nographic", "-nodefaults",
                "-no-user-config", "-boot", "n", "-uuid", uuid,
                "-netdev", "tap,id=net0,ifname=tap0,script=no,downscript=no",
                "-device", "virtio-net-pci,netdev=net0,mac=%s,bootindex=1" % mac,
                "-serial", "file:%s" % console, "-monitor", "none"]
        self.vm = self.spawn(self.site, argv, "qemu.out")
        return console

    def stop_vm(self) -> None:
        """Power the VM off (by PID), so that the same tap can boot it again."""
        stop_process(self.vm, STOP_TIMEOUT)
        self.processes.remove(self.vm)
        self.vm = None


def dhcp_lease(dnsmasq_log: str, mac: str) -> str | None:
    """The address dnsmasq acknowledged for ``mac``, from its log."""
    match = re.search(r"DHCPACK\(eth0\) (\S+) %s" % re.escape(mac), dnsmasq_log)
    return match.group(1) if match else None
