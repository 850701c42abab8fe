"""The console's HTTP shell: aiohttp on the coordination server's own event loop.

Every read and every change is one admin request handed to `answer`, the function behind the
admin socket (`meshvpn.coord.admin.answer` on the live core, followed by the server's actions),
so the console shows and changes exactly what `meshvpn coord ...` does: there is no second copy of
the state. Logins, sessions and CSRF tokens are decided by `auth.Sessions`; this module moves
cookies and forms. Every response forbids caching and framing, and allows scripts and styles from
the console itself only.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from meshvpn.config import ConsoleConfig
from meshvpn.coord.console import pages
from meshvpn.coord.console.auth import Session, Sessions
from meshvpn.coord.console.password import read_password
from meshvpn.errors import MeshError

log = logging.getLogger("meshvpn.coord.console")

COOKIE = "meshvpn_console"
MAX_BODY = 16 << 10
"""Bytes of form accepted: the largest form is a few hundred."""
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" would make browsers send `Origin: null` on POSTs
    "Cache-Control": "no-store",
}
NODE_ACTIONS = {
    "approve": ("node_approve", "approved"),
    "deny": ("node_revoke", "denied (its key is revoked)"),
    "revoke": ("node_revoke", "revoked"),
}

Answer = Callable[[dict], dict]
"""One admin request on the live core, answered (`CoordServer.admin_answer`)."""


class Console:
    """The web console of one coordination server."""

    def __init__(self, settings: ConsoleConfig, answer: Answer, *, clock: Callable[[], float] = time.time,
                 randbytes: Callable[[int], bytes]) -> None:
        self.settings = settings
        self.answer = answer
        self.clock = clock
        self.randbytes = randbytes
        self.sessions = Sessions(read_password(settings.password_file, randbytes))
        self.address: tuple[str, int] | None = None
        """Where the console listens (the real port when the config says 0)."""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=MAX_BODY, middlewares=[_headers, _local_host_only])
        app.add_routes([
            web.get("/", self._home),
            web.get("/login", self._login_form),
            web.post("/login", self._login),
            web.post("/logout", self._logout),
            web.get("/console.js", _asset(pages.SCRIPT, "text/javascript")),
            web.get("/console.css", _asset(pages.STYLE, "text/css")),
            web.get("/live/{page}", self._live),
            web.post("/nodes/{action}", self._node_action),
            web.post("/keys", self._create_key),
            web.get("/{page}", self._page),
        ])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.listen.host, self.settings.listen.port)
        try:
            await site.start()
        except OSError as exc:
            await self.close()
            raise MeshError(f"console cannot listen on {self.settings.listen} (console.listen): {exc}") from None
        self.address = self._runner.addresses[0][:2]
        log.info("web console on http://%s:%d/", *self.address)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ----- login

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE), self.clock())

    async def _home(self, request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/nodes" if self._session(request) else "/login")

    async def _login_form(self, request: web.Request) -> web.Response:
        if self._session(request):
            raise web.HTTPSeeOther("/nodes")
        return _html(pages.login_page())

    async def _login(self, request: web.Request) -> web.Response:
        _same_origin(request)
        form = await request.post()
        host, now = request.remote or "?", self.clock()
        session = self.sessions.login(host, str(form.get("password", "")), now, self.randbytes)
        if session is None:
            locked = self.sessions.locked_out(host, now)
            log.warning("console login refused from %s%s", host, ": too many failures" if locked else "")
            message = "Too many failed logins: wait a minute." if locked else "Wrong password."
            return _html(pages.login_page(message), status=401)
        log.info("console login from %s", host)
        response = web.HTTPSeeOther("/nodes")
        response.set_cookie(COOKIE, session.id, httponly=True, samesite="Strict", path="/", secure=request.secure)
        raise response

    async def _logout(self, request: web.Request) -> web.Response:
        await self._authorised(request)
        self.sessions.logout(request.cookies.get(COOKIE))
        response = web.HTTPSeeOther("/login")
        response.del_cookie(COOKIE, path="/")
        raise response

    async def _authorised(self, request: web.Request) -> tuple[Session, dict]:
        """The session and form of a state-changing request; 403 without both session and CSRF token."""
        _same_origin(request)
        form = await request.post()
        session = self.sessions.authorise(request.cookies.get(COOKIE), _field(form, "csrf"), self.clock())
        if session is None:
            log.warning("console request refused from %s: no session or a wrong CSRF token (%s)",
                        request.remote, request.path)
            raise web.HTTPForbidden(text="No session or a wrong CSRF token: nothing was changed.")
        return session, form

    # ----- pages

    async def _page(self, request: web.Request) -> web.Response:
        name, session = self._viewer(request, web.HTTPSeeOther("/login"))
        return _html(self._render(name, session))

    async def _live(self, request: web.Request) -> web.Response:
        """A page's live part alone; 401 tells the page's script that the session ended."""
        name, session = self._viewer(request, web.HTTPUnauthorized(text="log in again"))
        return _html(self._views()[name](session))

    def _viewer(self, request: web.Request, without_session: web.HTTPException) -> tuple[str, Session]:
        name = request.match_info["page"]
        if name not in self._views():
            raise web.HTTPNotFound()
        session = self._session(request)
        if session is None:
            raise without_session
        return name, session

    def _render(self, name: str, session: Session, top: str = "") -> str:
        title = dict(pages.PAGES)[f"/{name}"]
        form = pages.key_form(self._networks(), session.csrf) if name == "keys" else ""
        body = top + form + pages.live(f"/live/{name}", self._views()[name](session))
        return pages.page(title, f"/{name}", body, session.csrf, session.take_notice())

    def _views(self) -> dict[str, Callable[[Session], str]]:
        return {
            "nodes": lambda session: pages.nodes_live(self._ask("nodes_list")["nodes"], session.csrf, self.clock()),
            "networks": lambda session: pages.networks_live(self._ask("networks_list")["networks"]),
            "keys": lambda session: self._keys_live(),
            "access": lambda session: pages.access_live(
                self._ask("networks_list")["networks"], self._ask("nodes_list")["nodes"], self._ask("keys_list")["keys"]
            ),
        }

    def _keys_live(self) -> str:
        return pages.keys_live(self._ask("keys_list")["keys"], self.clock())

    def _networks(self) -> list[str]:
        return [network["name"] for network in self._ask("networks_list")["networks"]]

    def _ask(self, cmd: str) -> dict:
        response = self.answer({"cmd": cmd})
        if "error" in response:
            raise web.HTTPInternalServerError(text=response["error"])
        return response

    # ----- changes

    async def _node_action(self, request: web.Request) -> web.Response:
        action = NODE_ACTIONS.get(request.match_info["action"])
        if action is None:
            raise web.HTTPNotFound()
        session, form = await self._authorised(request)
        cmd, done = action
        response = self.answer({"cmd": cmd, "node": _field(form, "node") or ""})
        if "error" in response:
            session.notice = f"Nothing changed: {response['error']}"
        else:
            node = response["node"]
            session.notice = f"{node['name']} ({node['network']}, {node['address']}) {done}."
            log.info("console: node %s %s", node["name"], done)
        raise web.HTTPSeeOther("/nodes")

    async def _create_key(self, request: web.Request) -> web.Response:
        session, form = await self._authorised(request)
        expires = _field(form, "expires")
        response = self.answer({
            "cmd": "key_create",
            "network": _field(form, "network") or "",
            "reusable": _field(form, "reusable") == "1",
            "ephemeral": _field(form, "ephemeral") == "1",
            "expires": float(expires) if expires and expires.isdigit() else None,
        })
        if "error" in response:
            return _html(self._render("keys", session, pages.error_block(f"No key created: {response['error']}")))
        log.info("console: pre-auth key %s created for network %s", response["id"], response["network"])
        return _html(self._render("keys", session, pages.created_key(response, join_text(response))))


def join_text(created: dict) -> str:
    """What the host hands a friend for a new key: its join string (`meshvpn.joinstring`), as the
    admin verb prints it; the bare token when the server knows no address nodes can dial."""
    return created.get("join") or created["token"]


def _field(form, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) else None


def _same_origin(request: web.Request) -> None:
    """Refuse a POST whose Origin names another site (browsers send it on every POST)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise web.HTTPForbidden(text="Cross-site request: nothing was changed.")


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/html")


def _asset(text: str, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def serve(_request: web.Request) -> web.Response:
        return web.Response(text=text, content_type=content_type)
    return serve


@web.middleware
async def _local_host_only(request: web.Request, handler) -> web.StreamResponse:
    """Answer only requests addressed to an IP address or localhost: a web page whose DNS name
    was rebound to 127.0.0.1 gets nothing, not even the login form to guess passwords at."""
    if not _addressed_locally(request.host):
        raise web.HTTPMisdirectedRequest(text="Open the console by its IP address or localhost.")
    return await handler(request)


def _addressed_locally(host: str) -> bool:
    name = urlsplit(f"//{host}").hostname or ""
    if name == "localhost":
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@web.middleware
async def _headers(request: web.Request, handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response
