"""A web client of the dashboard for tests and benchmarks: its own cookies, the login
form filled in as a browser would, POSTs from the dashboard's origin."""

from __future__ import annotations

import functools
import http.client
import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any


@dataclass
class Reply:
    status: int
    body: str
    url: str
    headers: Message


class _Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class _From(urllib.request.HTTPHandler):
    """Connections from a given local address (another loopback address: another client
    address for the dashboard)."""

    def __init__(self, source: str) -> None:
        super().__init__()
        self.source = source

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        connect = functools.partial(http.client.HTTPConnection, source_address=(self.source, 0))
        return self.do_open(connect, req)


class Client:
    """A web client with its own cookies; POSTs say they come from the dashboard's origin
    (as a browser's do) unless told otherwise. ``source``: the local address to connect
    from."""

    def __init__(self, base: str, source: str | None = None) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        handlers: list[urllib.request.BaseHandler] = [
            urllib.request.HTTPCookieProcessor(self.cookies)
        ]
        if source is not None:
            handlers.append(_From(source))
        self.following = urllib.request.build_opener(*handlers)
        self.staying = urllib.request.build_opener(*handlers, _Stay())

    def get(self, path: str, *, follow: bool = True) -> Reply:
        return self._send(urllib.request.Request(self.base + path), follow)

    def post(
        self,
        path: str,
        form: dict[str, str],
        *,
        origin: str | None = "",
        follow: bool = True,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if origin is not None:
            sent["Origin"] = origin or self.base
        data = urllib.parse.urlencode(form).encode()
        return self._send(urllib.request.Request(self.base + path, data, sent), follow)

    def _send(self, request: urllib.request.Request, follow: bool) -> Reply:
        opener = self.following if follow else self.staying
        try:
            with opener.open(request, timeout=60) as reply:
                return Reply(reply.status, reply.read().decode(), reply.geturl(), reply.headers)
        except urllib.error.HTTPError as error:
            return Reply(error.code, error.read().decode(), request.full_url, error.headers)

    def csrf(self, path: str = "/") -> str:
        """The CSRF token of the forms of a page."""
        found = re.search(r'name="csrf" value="([^"]+)"', self.get(path).body)
        assert found is not None, f"no form on {path}"
        return found.group(1)

    def log_in(self, role: str, password: str = "", next_path: str = "/") -> Reply:
        token = self.csrf("/login?" + urllib.parse.urlencode({"next": next_path}))
        form = {"role": role, "password": password, "csrf": token, "next": next_path}
        return self.post("/login", form)

    def session_cookie(self) -> str | None:
        return next((c.value for c in self.cookies if c.name == "pgml_session"), None)


def logged_in(base: str, role: str = "postgres", password: str = "") -> Client:
    client = Client(base)
    reply = client.log_in(role, password)
    assert reply.status == 200 and f"logged in as {role}" in reply.body, reply.body
    return client
