"""The `.complete/<package id>` markers: a relay serves a package only while its marker
exists. medulla-syncthing writes them on relays once Syncthing has the whole package; on
the master host the store is the source, so a package is complete as soon as it is added.
"""

import os

COMPLETE_DIR = ".complete"


def marker_path(root, package_id):
    return os.path.join(root, COMPLETE_DIR, package_id)


def mark_complete(root, package_id):
    """Create the marker atomically (a relay never sees half a marker)."""
    folder = os.path.join(root, COMPLETE_DIR)
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, ".%s.tmp" % package_id)
    with open(tmp, "w"):
        pass
    os.replace(tmp, marker_path(root, package_id))


def clear_complete(root, package_id):
    try:
        os.unlink(marker_path(root, package_id))
    except FileNotFoundError:
        pass
