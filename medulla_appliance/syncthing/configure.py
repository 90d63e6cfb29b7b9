"""The Syncthing configuration medulla-syncthing wants, and applying it idempotently: read
what Syncthing has, write only what differs (PATCH of the differing keys, PUT for what is
missing), so applying twice changes nothing the second time.

Syncthing 1.19 endpoints: ``/rest/config/options`` (GET, PATCH),
``/rest/config/devices`` (GET) and ``/rest/config/devices/<id>`` (PUT, PATCH),
``/rest/config/folders/<id>`` (GET, PUT, PATCH), ``/rest/db/ignores`` (GET, POST).
"""

from __future__ import annotations

from twisted.logger import Logger

from .packages import IGNORE_PATTERNS

log = Logger(namespace="medulla.syncthing.configure")

FOLDER_LABEL = "Medulla packages"
FOLDER_TYPES = {"master": "sendonly", "relay": "receiveonly"}


def desired_options(settings) -> dict:
    """Discovery, relays and NAT as configured; reporting and upgrades always off."""
    return {
        "listenAddresses": list(settings.listen),
        "globalAnnounceEnabled": settings.global_discovery,
        "localAnnounceEnabled": settings.local_discovery,
        "relaysEnabled": settings.relays,
        "natEnabled": settings.nat,
        "urAccepted": -1,
        "crashReportingEnabled": False,
        "autoUpgradeIntervalH": 0,
        "startBrowser": False,
    }


def desired_device(peer) -> dict:
    """Keys we hold a peer device to (``paused`` is left to the admin once it exists)."""
    return {"deviceID": peer.device_id, "name": peer.name, "addresses": list(peer.addresses),
            "introducer": False, "autoAcceptFolders": False}


def desired_folder(settings, my_id: str) -> dict:
    """The packages folder: send-only on the master, receive-only on a relay, shared with
    the peers, no versioning, package after package (alphabetic order)."""
    devices = [my_id] + [peer.device_id for peer in settings.peers]
    return {
        "id": settings.folder_id,
        "label": FOLDER_LABEL,
        "path": settings.packages_root,
        "type": FOLDER_TYPES[settings.role],
        "devices": [{"deviceID": device} for device in dict.fromkeys(devices)],
        "rescanIntervalS": settings.rescan_interval,
        "fsWatcherEnabled": True,
        "fsWatcherDelayS": settings.watch_delay,
        "ignorePerms": False,
        "ignoreDelete": False,
        "order": "alphabetic",
        "versioning": {"type": ""},
    }


def _same(key, current, wanted) -> bool:
    if key == "devices":
        return {d.get("deviceID") for d in current or ()} == {d["deviceID"] for d in wanted}
    if key == "versioning":
        return (current or {}).get("type", "") == wanted["type"]
    return current == wanted


def differences(current: dict, desired: dict) -> dict:
    """The keys of ``desired`` whose value ``current`` does not have."""
    return {key: value for key, value in desired.items()
            if key not in current or not _same(key, current[key], value)}


async def apply(client, settings, my_id: str) -> list[str]:
    """Bring Syncthing's configuration to what ``settings`` want; returns what was changed
    (empty when it already was)."""
    changed = []
    options = await client.options()
    patch = differences(options, desired_options(settings))
    if patch:
        await client.patch_options(patch)
        changed.append("options " + ", ".join(sorted(patch)))
    known = {device["deviceID"]: device for device in await client.devices()}
    for peer in settings.peers:
        wanted = desired_device(peer)
        current = known.get(peer.device_id)
        if current is None:
            await client.put_device({**wanted, "paused": False})
            changed.append(f"device {peer.name} added")
            continue
        patch = differences(current, wanted)
        if patch:
            await client.patch_device(peer.device_id, patch)
            changed.append(f"device {peer.name}: " + ", ".join(sorted(patch)))
    wanted = desired_folder(settings, my_id)
    current = await client.folder(settings.folder_id)
    if current is None:
        await client.put_folder({**wanted, "paused": False})
        changed.append(f"folder {settings.folder_id} added")
    else:
        patch = differences(current, wanted)
        if patch:
            await client.patch_folder(settings.folder_id, patch)
            changed.append(f"folder {settings.folder_id}: " + ", ".join(sorted(patch)))
    ignores = await client.ignores(settings.folder_id)
    if list((ignores or {}).get("ignore") or ()) != list(IGNORE_PATTERNS):
        await client.set_ignores(settings.folder_id, IGNORE_PATTERNS)
        changed.append("ignore patterns")
    if changed:
        required = await client.restart_required()
        if (required or {}).get("requiresRestart"):
            log.warn("Syncthing needs a restart for these changes to take effect: {changed}",
                     changed="; ".join(changed))
    return changed
