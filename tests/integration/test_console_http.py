"""The coord's web console over real HTTP on loopback, with nodes joined over the real channel.

Each test logs in as a browser would (form POST, cookie) and checks what the pages show and what
each action changes in the live core; the forged requests (no session, a wrong or missing CSRF
token, another site's Origin) must change nothing.
"""

import asyncio
import html
import re

import aiohttp
import pytest

from meshvpn import joinstring, keys
from meshvpn.control import messages as m
from meshvpn.node.coordclient import CoordLinkClosed, CoordRefused, connect
from meshvpn.coord.console.auth import MAX_FAILURES

pytestmark = pytest.mark.timeout(60)


def browser() -> aiohttp.ClientSession:
    """A client that keeps cookies for 127.0.0.1 (aiohttp's jar ignores IP hosts by default)."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def log_in(http: aiohttp.ClientSession, mesh, password: str = None) -> aiohttp.ClientResponse:
    return await http.post(f"{mesh.url}/login", data={"password": password or mesh.PASSWORD}, allow_redirects=False)


async def csrf_of(http: aiohttp.ClientSession, mesh, page: str = "/nodes") -> str:
    text = await (await http.get(mesh.url + page)).text()
    return re.search(r'name="csrf" value="([^"]+)"', text).group(1)


async def next_of(client, kind: type) -> m.Message:
    """The next message of `kind`, skipping others (peer updates, pongs)."""
    while not isinstance(message := await client.recv(5), kind):
        pass
    return message


def test_pages_need_a_login_and_the_session_cookie_is_httponly_and_samesite(console_mesh):
    async def scenario():
        async with console_mesh as mesh, browser() as http:
            page = await http.get(f"{mesh.url}/nodes", allow_redirects=False)
            fragment = await http.get(f"{mesh.url}/live/nodes", allow_redirects=False)
            wrong = await log_in(http, mesh, "guess")
            right = await log_in(http, mesh)
            nodes = await http.get(f"{mesh.url}/nodes")
            return page, fragment, wrong, await wrong.text(), right, nodes, await nodes.text()

    page, fragment, wrong, wrong_text, right, nodes, nodes_text = asyncio.run(scenario())
    assert (page.status, page.headers["Location"]) == (303, "/login")
    assert fragment.status == 401
    assert wrong.status == 401 and "Wrong password" in wrong_text and "Set-Cookie" not in wrong.headers
    assert (right.status, right.headers["Location"]) == (303, "/nodes")
    cookie = right.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert nodes.status == 200 and "<h2>Nodes</h2>" in nodes_text
    assert nodes.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in nodes.headers["Content-Security-Policy"]
    assert "script-src 'self'" in nodes.headers["Content-Security-Policy"], "no inline script may run"


def test_forged_requests_change_nothing(console_mesh):
    async def scenario():
        async with console_mesh as mesh, browser() as http, browser() as stranger:
            alice = await mesh.connect("alice")
            await log_in(http, mesh)
            csrf = await csrf_of(http, mesh)
            key = mesh.node("alice")["key"]
            url = f"{mesh.url}/nodes/revoke"
            forged = ("y" if csrf[0] == "x" else "x") + csrf[1:]  # differs from the real token in one character
            statuses = [
                (await http.post(url, data={"node": key}, allow_redirects=False)).status,
                (await http.post(url, data={"node": key, "csrf": forged}, allow_redirects=False)).status,
                (await stranger.post(url, data={"node": key, "csrf": csrf}, allow_redirects=False)).status,
                (await http.post(url, data={"node": key, "csrf": csrf}, allow_redirects=False,
                                 headers={"Origin": "http://evil.example"})).status,
                (await http.post(f"{mesh.url}/keys", data={"network": "home"}, allow_redirects=False)).status,
                (await http.get(url, allow_redirects=False)).status,
            ]
            await asyncio.sleep(0.2)
            after = mesh.node("alice")
            keys = mesh.server.admin_answer({"cmd": "keys_list"})["keys"]
            return statuses, after, alice.close_reason, len(keys)

    statuses, alice, close_reason, key_count = asyncio.run(scenario())
    assert statuses[:5] == [403] * 5
    assert statuses[5] == 405, "a GET never changes anything"
    assert (alice["state"], alice["revoked"], close_reason) == ("online", False, None)
    assert key_count == 1, "only the key the node joined with"


def test_revoke_closes_the_node_and_it_leaves_the_list(console_mesh):
    async def scenario():
        async with console_mesh as mesh, browser() as http:
            alice = await mesh.connect("alice")
            bob = await mesh.connect("bob")
            await log_in(http, mesh)
            csrf = await csrf_of(http, mesh)
            before = await (await http.get(f"{mesh.url}/live/nodes")).text()
            answer = await http.post(f"{mesh.url}/nodes/revoke", data={"node": mesh.node("bob")["key"], "csrf": csrf})
            page = await answer.text()
            refused = await next_of(bob, m.Error)
            removed = await next_of(alice, m.PeerRemove)
            after = await (await http.get(f"{mesh.url}/live/nodes")).text()
            return before, page, refused.code, removed, after, mesh.node("bob")

    before, page, code, removed, after, bob = asyncio.run(scenario())
    assert 'data-node="bob"' in before.split('id="nodes"')[1]
    assert "bob (home, 100.64.0.3) revoked." in page
    assert code == "revoked" and isinstance(removed, m.PeerRemove)
    assert 'data-node="bob"' not in after.split('id="nodes"')[1]
    assert "Revoked, refused for good: bob (home)" in after
    assert bob["revoked"] is True


def test_approve_brings_a_waiting_node_online_and_deny_shuts_one_out(console_mesh):
    async def scenario():
        async with console_mesh as mesh, browser() as http:
            carol = await mesh.connect("carol", "office")
            dave = await mesh.connect("dave", "office")
            await log_in(http, mesh)
            page = await (await http.get(f"{mesh.url}/nodes")).text()
            csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
            await http.post(f"{mesh.url}/nodes/approve", data={"node": mesh.node("carol")["key"], "csrf": csrf})
            registered, _ = await carol.registration(5)
            await http.post(f"{mesh.url}/nodes/deny", data={"node": mesh.node("dave")["key"], "csrf": csrf})
            with pytest.raises((CoordRefused, CoordLinkClosed)):
                await dave.registration(5)
            after = await (await http.get(f"{mesh.url}/live/nodes")).text()
            return page, registered, after, mesh.node("carol"), mesh.node("dave")

    page, registered, after, carol, dave = asyncio.run(scenario())
    pending = page.split('id="pending"')[1].split("</table>")[0]
    assert 'data-node="carol"' in pending and 'data-node="dave"' in pending
    assert registered.name == "carol" and carol["state"] == "online"
    assert dave["revoked"] is True
    assert 'id="pending"' not in after
    assert 'data-node="carol"' in after.split('id="nodes"')[1]


def test_nodes_show_the_paths_they_report(console_mesh):
    async def scenario():
        async with console_mesh as mesh, browser() as http:
            alice = await mesh.connect("alice")
            await mesh.connect("bob")
            await mesh.connect("carol")
            mesh.report_paths(alice, bob="direct", carol="relay", mallory="lan")
            await asyncio.sleep(0.2)
            await log_in(http, mesh)
            return await (await http.get(f"{mesh.url}/live/nodes")).text()

    page = asyncio.run(scenario())
    alice_row = page.split('data-node="alice"')[1].split("</tr>")[0]
    assert "bob: direct" in alice_row and "carol: relay" in alice_row and "mallory" not in alice_row
    bob_row = page.split('data-node="bob"')[1].split("</tr>")[0]
    assert "100.64.0.3" in bob_row and "online" in bob_row and "no peer reached yet" in bob_row


def test_a_created_key_is_shown_once_in_the_page_and_admits_a_node(console_mesh):
    async def scenario():
        async with console_mesh as mesh, browser() as http:
            await log_in(http, mesh)
            csrf = await csrf_of(http, mesh, "/keys")
            answer = await http.post(f"{mesh.url}/keys", data={"network": "home", "expires": "3600", "csrf": csrf},
                                     allow_redirects=False)
            page = await answer.text()
            token = re.search(r'id="join-string">([^<]+)<', page).group(1)
            joining = joinstring.decode(token)
            assert (joining.coord, joining.coord_key) == (mesh.server.address, mesh.server.identity.public)
            later = await (await http.get(f"{mesh.url}/keys")).text()
            bad = await (await http.post(f"{mesh.url}/keys", data={"network": "nowhere", "csrf": csrf})).text()
            client = await connect(mesh.server.address, mesh.server.identity.public, keys.generate_private_key())
            mesh.clients.append(client)
            registered, _ = await client.register(m.Register("erin", "test", (), auth_key=joining.auth_key))
            return answer, page, token, later, bad, registered

    answer, page, token, later, bad, registered = asyncio.run(scenario())
    assert answer.status == 200 and token.startswith("mvk-"), "shown in the answer's body, not behind a redirect"
    assert token not in str(answer.url)
    assert token not in later, "shown once"
    key_id = re.search(r"Key <code>([0-9a-f]+)</code>", page).group(1)
    assert key_id in later and "one-off" in later
    assert "No key created: no network named 'nowhere'" in html.unescape(bad)
    assert registered.name == "erin"


def test_logout_ends_the_session_and_failed_logins_lock_out(console_mesh):
    async def scenario():
        async with console_mesh as mesh, browser() as http:
            await log_in(http, mesh)
            csrf = await csrf_of(http, mesh)
            out = await http.post(f"{mesh.url}/logout", data={"csrf": csrf}, allow_redirects=False)
            after = await http.get(f"{mesh.url}/nodes", allow_redirects=False)
            failures = [(await log_in(http, mesh, "guess")).status for _ in range(MAX_FAILURES)]
            locked = await log_in(http, mesh)
            return out.status, after.status, failures, locked.status, await locked.text()

    out, after, failures, locked, text = asyncio.run(scenario())
    assert (out, after) == (303, 303)
    assert failures == [401] * MAX_FAILURES
    assert locked == 401 and "Too many failed logins" in text


def test_a_page_reached_by_a_dns_name_gets_nothing(console_mesh):
    """A site whose name an attacker rebinds to 127.0.0.1 must not reach even the login form."""
    async def scenario():
        async with console_mesh as mesh, browser() as http:
            port = mesh.server.console.address[1]
            hosts = ["evil.example", f"evil.example:{port}", "localhost", f"LOCALHOST:{port}", f"127.0.0.1:{port}",
                     "[::1]", f"[::1]:{port}"]
            statuses = []
            for host in hosts:
                answer = await http.get(f"{mesh.url}/login", headers={"Host": host}, allow_redirects=False)
                statuses.append(answer.status)
            posted = await http.post(f"{mesh.url}/login", data={"password": mesh.PASSWORD},
                                     headers={"Host": "evil.example"}, allow_redirects=False)
            return statuses, posted.status, "Set-Cookie" in posted.headers

    statuses, posted, cookie = asyncio.run(scenario())
    assert statuses == [421, 421, 200, 200, 200, 200, 200]
    assert (posted, cookie) == (421, False)
