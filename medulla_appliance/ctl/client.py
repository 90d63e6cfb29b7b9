"""A small synchronous client for the master's admin API (stdlib ``urllib`` only).

Every failure becomes one of the exceptions below, each carrying a one-line message
for the admin and the exit code ``medullactl`` uses for it.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:7080"
DEFAULT_TIMEOUT = 10.0
#: Adding a package copies and hashes every file on the master: gigabytes take a while.
PACKAGE_ADD_TIMEOUT = 3600.0
#: A reply bigger than this is not the API's; reading it all would only waste memory.
MAX_REPLY_BYTES = 64 * 1024 * 1024

EXIT_API = 1
EXIT_UNREACHABLE = 3
EXIT_AUTH = 4


class ClientError(Exception):
    """Base of the client's errors: ``str()`` is one line; ``exit_code`` for the CLI."""

    exit_code = EXIT_API


class ApiError(ClientError):
    """The API answered with an error; *status* is the HTTP code, *body* its JSON."""

    def __init__(self, message: str, status: int = 0, body: dict | None = None):
        super().__init__(message)
        self.status, self.body = status, body or {}


class NotFound(ApiError):
    """404: no machine matches."""


class Ambiguous(ApiError):
    """409: several machines match; ``body["candidates"]`` lists them."""


class Unreachable(ClientError):
    """No HTTP answer at all: refused, timed out, unknown host, TLS failure."""

    exit_code = EXIT_UNREACHABLE


class Unauthorized(ClientError):
    """401: the master does not accept our token."""

    exit_code = EXIT_AUTH


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect would carry the bearer token to wherever it points; the API never
    # redirects, so one is an error.
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def check_url(url: str) -> str:
    """Return *url* without trailing slashes, or raise ``ValueError`` (not http/https)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid API URL {url!r}: expected http://HOST:PORT or https://...")
    return url.rstrip("/")


def _segment(text: str) -> str:
    """*text* as one path segment: ``/``, ``?``, ``..`` and the rest percent-encoded."""
    return urllib.parse.quote(text, safe="") if text not in (".", "..") else \
        text.replace(".", "%2E")


class ApiClient:
    """Calls the ``/api/v1`` endpoints of the master at *base_url* with *token*."""

    def __init__(self, base_url: str, token: str, *, timeout: float = DEFAULT_TIMEOUT,
                 token_file: str = "the token file"):
        self.base_url = check_url(base_url)
        self._token = token
        self._timeout = timeout
        self._token_file = token_file
        # No proxies: the API is local (or on the admin LAN), and an http_proxy in the
        # admin's environment must not receive the token.
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), _NoRedirect())

    def status(self) -> dict:
        """``GET /api/v1/status``."""
        return self._get("/api/v1/status")

    def machines(self, online: bool | None = None) -> list[dict]:
        """``GET /api/v1/machines``, optionally only online or offline ones."""
        query = "" if online is None else "?online=" + ("true" if online else "false")
        body = self._get("/api/v1/machines" + query)
        machines = body.get("machines")
        if not isinstance(machines, list):
            raise ApiError(f"unexpected reply from {self.base_url}: no machine list")
        return machines

    def machine(self, name: str) -> dict:
        """``GET /api/v1/machines/<name>``: one machine with its history."""
        return self._get("/api/v1/machines/" + _segment(name))

    def reset_key(self, name: str) -> dict:
        """``POST /api/v1/machines/<name>/reset-key``: its next enrolment pins a new key."""
        return self._request("POST", f"/api/v1/machines/{_segment(name)}/reset-key", data=b"")

    # -- packages ----------------------------------------------------------------------

    def packages(self) -> list[dict]:
        """``GET /api/v1/packages``: a summary of each package."""
        return self._list("/api/v1/packages", "packages")

    def package(self, package_id: str) -> dict:
        """``GET /api/v1/packages/<id>``: the package's descriptor."""
        return self._get("/api/v1/packages/" + _segment(package_id))

    def add_package(self, path: str, *, replace: bool = False, fmt: str = "native") -> dict:
        """``POST /api/v1/packages``: the master copies in the folder *path* (on its host)."""
        return self._request("POST", "/api/v1/packages",
                             body={"path": path, "replace": replace, "format": fmt},
                             timeout=max(self._timeout, PACKAGE_ADD_TIMEOUT))

    def remove_package(self, package_id: str) -> dict:
        """``DELETE /api/v1/packages/<id>``."""
        return self._request("DELETE", "/api/v1/packages/" + _segment(package_id))

    # -- deployments -------------------------------------------------------------------

    def deployments(self) -> list[dict]:
        """``GET /api/v1/deployments``: the newest deployments, targets counted by state."""
        return self._list("/api/v1/deployments", "deployments")

    def deployment(self, dep_id: str) -> dict:
        """``GET /api/v1/deployments/<id>``: the deployment and each of its targets."""
        return self._get("/api/v1/deployments/" + _segment(dep_id))

    def deploy(self, request: dict) -> dict:
        """``POST /api/v1/deployments`` with *request* (package, targets, window...)."""
        return self._request("POST", "/api/v1/deployments", body=request)

    def stop_deployment(self, dep_id: str) -> dict:
        """``POST /api/v1/deployments/<id>/stop``."""
        return self._request("POST", f"/api/v1/deployments/{_segment(dep_id)}/stop", data=b"")

    def restart_deployment(self, dep_id: str) -> dict:
        """``POST /api/v1/deployments/<id>/restart``: failed, stopped, expired targets."""
        return self._request("POST", f"/api/v1/deployments/{_segment(dep_id)}/restart",
                             data=b"")

    def audit(self, dep_id: str, machine: str) -> dict:
        """``GET /api/v1/deployments/<id>/machines/<machine>/audit``: that machine's log."""
        return self._get(f"/api/v1/deployments/{_segment(dep_id)}/machines/"
                         f"{_segment(machine)}/audit")

    # -- groups ------------------------------------------------------------------------

    def groups(self) -> list[dict]:
        """``GET /api/v1/groups``: each group with its machine counts."""
        return self._list("/api/v1/groups", "groups")

    def group(self, name: str) -> dict:
        """``GET /api/v1/groups/<name>``: the group and its machines."""
        return self._get("/api/v1/groups/" + _segment(name))

    def create_group(self, name: str, machines: list[str], *, replace: bool = False) -> dict:
        """``POST /api/v1/groups``: a group of *machines* (names), replacing one if asked."""
        return self._request("POST", "/api/v1/groups",
                             body={"name": name, "machines": machines, "replace": replace})

    def change_group(self, name: str, verb: str, machines: list[str]) -> dict:
        """``POST /api/v1/groups/<name>/add`` or ``.../remove`` (*verb*) with *machines*."""
        return self._request("POST", f"/api/v1/groups/{_segment(name)}/{_segment(verb)}",
                             body={"machines": machines})

    def delete_group(self, name: str) -> dict:
        """``DELETE /api/v1/groups/<name>``: the group goes, its machines stay."""
        return self._request("DELETE", "/api/v1/groups/" + _segment(name))

    # -- relays ------------------------------------------------------------------------

    def relays(self) -> list[dict]:
        """``GET /api/v1/relays``: the enrolled relays."""
        return self._list("/api/v1/relays", "relays")

    def relay(self, name: str) -> dict:
        """``GET /api/v1/relays/<name>``: one relay, its daemons, status and packages."""
        return self._get("/api/v1/relays/" + _segment(name))

    def reset_relay_key(self, name: str) -> dict:
        """``POST /api/v1/relays/<name>/reset-key``: its next enrolment pins a new key."""
        return self._request("POST", f"/api/v1/relays/{_segment(name)}/reset-key", data=b"")

    # -- bans --------------------------------------------------------------------------

    def bans(self, host: str | None = None) -> list[dict]:
        """``GET /api/v1/bans``: medulla-guard's bans in force on every host (or *host*)."""
        query = "" if host is None else "?host=" + urllib.parse.quote(host, safe="")
        return self._list("/api/v1/bans" + query, "bans")

    # -- PXE boot menus ----------------------------------------------------------------

    def pxe(self, method: str, path: str, body: dict | None = None) -> dict:
        """A ``/api/v1/pxe/...`` call for ``medullactl pxe menu``; *path* is already made
        of encoded segments."""
        if body is None and method in ("POST", "PUT", "PATCH"):
            return self._request(method, path, data=b"")
        return self._request(method, path, body=body)

    def _list(self, path: str, key: str) -> list[dict]:
        items = self._get(path).get(key)
        if not isinstance(items, list):
            raise ApiError(f"unexpected reply from {self.base_url}: no {key} list")
        return [item for item in items if isinstance(item, dict)]

    def _get(self, path: str) -> dict:
        return self._request("GET", path)

    def _request(self, method: str, path: str, data: bytes | None = None, *,
                 body: dict | None = None, timeout: float | None = None) -> dict:
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers=headers)
        timeout = self._timeout if timeout is None else timeout
        try:
            with self._opener.open(request, timeout=timeout) as reply:
                return self._decode(reply.read(MAX_REPLY_BYTES + 1))
        except urllib.error.HTTPError as e:
            with e:
                raise self._http_error(e.code, e.read(MAX_REPLY_BYTES + 1)) from None
        except urllib.error.URLError as e:
            raise Unreachable(self._unreachable(e.reason, timeout)) from None
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(self._unreachable(e, timeout)) from None

    def _decode(self, data: bytes) -> dict:
        if len(data) > MAX_REPLY_BYTES:
            raise ApiError(f"reply from {self.base_url} is larger than {MAX_REPLY_BYTES} bytes")
        try:
            body = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ApiError(f"unexpected reply from {self.base_url}: not JSON "
                           "(does --url point at medulla-master?)") from None
        if not isinstance(body, dict):
            raise ApiError(f"unexpected reply from {self.base_url}: not a JSON object")
        return body

    def _http_error(self, status: int, data: bytes) -> ClientError:
        try:
            body = self._decode(data)
        except ApiError:
            body = {}
        message = body.get("message") if isinstance(body.get("message"), str) else ""
        if status == 401:
            return Unauthorized(
                f"the master API at {self.base_url} refused the token from "
                f"{self._token_file} (HTTP 401) — if the file was replaced, restart "
                "medulla-master (systemctl restart medulla-master)")
        if status == 404 and body.get("error") == "not-found":
            return NotFound(message or "not found", status, body)
        if status == 409 and body.get("error") == "ambiguous":
            return Ambiguous(message or "ambiguous name", status, body)
        if 400 <= status < 500 and message:
            return ApiError(message, status, body)  # a refusal the master explains
        what = body.get("error") if isinstance(body.get("error"), str) else "error"
        detail = f": {message}" if message else ""
        hint = " — see journalctl -u medulla-master" if status >= 500 else ""
        return ApiError(f"the master API answered HTTP {status} ({what}){detail}{hint}",
                        status, body)

    def _unreachable(self, reason: Any, timeout: float) -> str:
        if isinstance(reason, ConnectionRefusedError):
            why = "connection refused"
        elif isinstance(reason, (socket.timeout, TimeoutError)):
            why = f"no answer within {timeout:g}s"
        elif isinstance(reason, socket.gaierror):
            why = "unknown host name"
        elif isinstance(reason, ssl.SSLError):
            why = f"TLS failure ({reason.reason or reason})"
        elif isinstance(reason, http.client.HTTPException) and not isinstance(reason, OSError):
            why = f"not an HTTP answer ({type(reason).__name__})"
        elif isinstance(reason, OSError):
            why = (reason.strerror or str(reason)).lower()
        else:
            why = str(reason) or type(reason).__name__
        return (f"cannot reach the master API at {self.base_url}: {why} — is medulla-master "
                "running? (systemctl status medulla-master)")

