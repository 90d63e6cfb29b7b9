"""What the agent keeps between runs, under its state directory (0700):
`agent.key` (its Ed25519 key, 0600, never leaves the machine) and `state.json` (0600:
the JID suffix, the XMPP password it chose and the JID it made the account for, the
relay the assessor gave it, its uuid)."""

import json
import os
import secrets
import string

from medulla_appliance.core import keys

SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
STATE_FILE = "state.json"
KEY_FILE = "agent.key"


class StateError(Exception):
    """The state directory or a file in it is unusable; the message names it."""


class AgentState:
    """The agent's persistent identity and memory."""

    def __init__(self, directory, *, token=secrets.token_urlsafe, choice=secrets.choice):
        self.directory = directory
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as e:
            raise StateError("cannot create state directory %s: %s" % (directory, e)) from e
        self.private_key = keys.load_or_create_private_key(os.path.join(directory, KEY_FILE))
        self.public_key_text = keys.public_key_text(self.private_key)
        self.path = os.path.join(directory, STATE_FILE)
        self.values = self._read()
        changed = False
        if not self._valid_suffix(self.values.get("suffix")):
            self.values["suffix"] = "".join(choice(SUFFIX_ALPHABET) for _ in range(3))
            changed = True
        if not isinstance(self.values.get("password"), str) or len(self.values["password"]) < 16:
            self.values["password"] = token(24)
            self.values["account_jid"] = None  # no XMPP account made with this password
            changed = True
        if changed:
            self.save()

    @staticmethod
    def _valid_suffix(value):
        return isinstance(value, str) and len(value) == 3 and all(
            c in SUFFIX_ALPHABET for c in value)

    def _read(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                values = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            # A corrupt state file must not brick the agent: start afresh, keep the key.
            os.replace(self.path, self.path + ".corrupt")
            return {"_recovered_from": str(e)[:200]}
        return values if isinstance(values, dict) else {}

    def __getitem__(self, key):
        return self.values.get(key)

    def update(self, **changes):
        self.values.update(changes)
        self.save()

    def save(self):
        """Write state.json atomically with mode 0600."""
        tmp = self.path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({k: v for k, v in self.values.items() if not k.startswith("_")}, f,
                      indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
