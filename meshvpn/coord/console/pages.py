"""The console's HTML: plain server-rendered pages from the admin verbs' answers.

Every function takes what `meshvpn.coord.admin.answer` returned (the same dicts `meshvpn coord
... --json` prints) and returns HTML text; every value from the store or the network goes through
`html.escape`. Each page has a live part (`<div id="live" data-src=...>`) that `SCRIPT` fetches
again every `REFRESH_MS` and swaps in, so the view follows the mesh without a reload. Forms that
change anything are POSTs carrying the session's CSRF token; nothing secret is put in a URL.
"""

from __future__ import annotations

from html import escape
from typing import Iterable

from meshvpn.localsock import format_ago

REFRESH_MS = 2000
PAGES = (("/nodes", "Nodes"), ("/networks", "Networks"), ("/keys", "Pre-auth keys"), ("/access", "Access"))
PATH_CHIPS = 8
"""Peers listed one by one in a node's path column; above that, counts per kind."""
HERE = ' class="here" aria-current="page"'
EXPIRIES = (("3600", "1 hour"), ("86400", "1 day"), ("604800", "7 days"), ("", "never"))

SCRIPT = f"""\
// Refreshes the page's live part; a lost session sends the browser back to the login page.
(function () {{
  const live = document.getElementById("live");
  if (!live) return;
  async function refresh() {{
    try {{
      const answer = await fetch(live.dataset.src, {{credentials: "same-origin", cache: "no-store"}});
      if (answer.status === 401) {{ window.location.assign("/login"); return; }}
      if (answer.ok) live.innerHTML = await answer.text();
    }} catch (error) {{ /* the server restarts: try again next round */ }}
  }}
  setInterval(refresh, {REFRESH_MS});
}})();
"""

STYLE = """\
body { font: 15px/1.4 system-ui, sans-serif; margin: 0; color: #1d232b; background: #f5f6f8; }
header { background: #1d3b5a; color: #fff; padding: .6em 1.2em; display: flex; gap: 1.4em; align-items: center; }
header a { color: #cfe3f7; text-decoration: none; } header a.here { color: #fff; font-weight: 600; }
header form { margin-left: auto; } main { padding: 1em 1.2em; max-width: 72em; }
h1 { font-size: 1.1em; margin: 0; } h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; background: #fff; width: 100%; }
th, td { text-align: left; padding: .35em .6em; border-bottom: 1px solid #e2e5ea; vertical-align: top; }
th { font-size: .85em; color: #556; font-weight: 600; }
.state { font-weight: 600; } .online { color: #177a3c; } .offline, .unapproved { color: #777; }
.pending { color: #a86400; } .revoked { color: #a11; }
.path { display: inline-block; border-radius: .6em; padding: 0 .5em; margin: 0 .3em .2em 0; font-size: .85em; }
.path-lan { background: #d8f0dc; } .path-direct { background: #d6e8fa; } .path-tcp { background: #e5dcf5; }
.path-relay { background: #fbe7c9; } .path-none { background: #eee; color: #777; }
.notice { background: #e6f4ea; border: 1px solid #a8d5b5; padding: .5em .8em; }
.error { background: #fde8e8; border: 1px solid #f0b4b4; padding: .5em .8em; }
.secret { font: 1.05em monospace; background: #fff; border: 1px dashed #1d3b5a; padding: .6em; word-break: break-all; }
button { font: inherit; padding: .15em .7em; cursor: pointer; } button.danger { color: #a11; }
form.inline { display: inline; } code { font-size: .9em; } .muted { color: #777; }
"""


def page(title: str, path: str, body: str, csrf: str, notice: str = "") -> str:
    """A whole page of the logged-in console."""
    nav = "".join(
        f'<a href="{href}"{HERE if href == path else ""}>{escape(name)}</a>' for href, name in PAGES
    )
    logout = f'<form method="post" action="/logout">{_csrf(csrf)}<button>Log out</button></form>'
    shown = f'<p class="notice" role="status">{escape(notice)}</p>' if notice else ""
    return _document(title, f"<header><h1>meshvpn</h1>{nav}{logout}</header><main>{shown}{body}</main>")


def login_page(message: str = "") -> str:
    error = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    form = (
        '<form method="post" action="/login"><p><label>Password <input type="password" name="password" '
        'autocomplete="current-password" autofocus required></label> <button>Log in</button></p></form>'
        '<p class="muted">The password is the first line of the file named by <code>console.password_file</code> '
        "in coord.yaml.</p>"
    )
    return _document("Log in", f"<header><h1>meshvpn console</h1></header><main>{error}{form}</main>")


def live(src: str, inner: str) -> str:
    """The part of a page that `SCRIPT` refreshes from `src`."""
    return f'<div id="live" data-src="{escape(src)}">{inner}</div>'


def _document(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{escape(title)} · meshvpn</title><link rel="stylesheet" href="/console.css">'
        f'<script src="/console.js" defer></script></head><body>{body}</body></html>'
    )


def _csrf(token: str) -> str:
    return f'<input type="hidden" name="csrf" value="{escape(token)}">'


def _action(url: str, node: dict, label: str, csrf: str, danger: bool = False) -> str:
    css = ' class="danger"' if danger else ""
    return (f'<form class="inline" method="post" action="{url}">{_csrf(csrf)}'
            f'<input type="hidden" name="node" value="{escape(node["key"])}">'
            f"<button{css}>{label}</button></form>")


# ----- nodes


def nodes_live(nodes: list[dict], csrf: str, now: float) -> str:
    """Pending approvals, then every node that is not revoked, then the revoked ones."""
    pending = [n for n in nodes if n["state"] in ("pending", "unapproved")]
    members = [n for n in nodes if not n["revoked"] and n["approved"]]
    revoked = [n for n in nodes if n["revoked"]]
    out = []
    if pending:
        rows = "".join(
            f'<tr data-node="{escape(n["name"])}"><td>{escape(n["name"])}</td><td>{escape(n["network"])}</td>'
            f'<td>{escape(n["address"])}</td><td>{_text(n["hostname"])}</td><td>{_text(n["observed_host"])}</td>'
            f'<td><span class="state {n["state"]}">{"waiting" if n["state"] == "pending" else "offline"}</span></td>'
            f'<td>{_action("/nodes/approve", n, "Approve", csrf)} {_action("/nodes/deny", n, "Deny", csrf, True)}</td></tr>'
            for n in pending
        )
        out.append('<h2>Waiting for approval</h2><table id="pending"><tr><th>Name</th><th>Network</th>'
                   f"<th>Address</th><th>Host name</th><th>Seen from</th><th>State</th><th></th></tr>{rows}</table>")
    names = {(n["network"], n["name"]) for n in members}
    rows = "".join(_node_row(n, names, csrf, now) for n in members)
    empty = '<tr><td colspan="8" class="muted">No nodes yet: create a pre-auth key and join a machine.</td></tr>'
    out.append('<h2>Nodes</h2><table id="nodes"><tr><th>Name</th><th>Network</th><th>Overlay address</th>'
               "<th>State</th><th>Paths to peers</th><th>Seen from</th><th>Last seen</th><th></th></tr>"
               f"{rows or empty}</table>")
    if revoked:
        listed = ", ".join(f"{escape(n['name'])} ({escape(n['network'])})" for n in revoked)
        out.append(f'<p class="muted" id="revoked">Revoked, refused for good: {listed}</p>')
    return "".join(out)


def _node_row(node: dict, names: set, csrf: str, now: float) -> str:
    seen = "now" if node["online"] else format_ago(None if node["last_seen"] is None else now - node["last_seen"])
    return (
        f'<tr data-node="{escape(node["name"])}"><td title="{escape(node["key"])}">{escape(node["name"])}</td>'
        f'<td>{escape(node["network"])}</td><td>{escape(node["address"])}</td>'
        f'<td><span class="state {node["state"]}">{node["state"]}</span></td>'
        f'<td class="paths">{paths_cell(node, names)}</td><td>{_text(node["observed_host"])}</td>'
        f"<td>{seen}</td><td>{_action('/nodes/revoke', node, 'Revoke', csrf, True)}</td></tr>"
    )


def paths_cell(node: dict, names: set) -> str:
    """The node's current path kind to each peer, as the node last reported it."""
    if not node["online"]:
        return '<span class="muted">-</span>'
    paths = {peer: kind for peer, kind in node.get("paths", {}).items() if (node["network"], peer) in names}
    if not paths:
        return '<span class="muted">no peer reached yet</span>'
    if len(paths) > PATH_CHIPS:
        counts: dict[str, int] = {}
        for kind in paths.values():
            counts[kind or "none"] = counts.get(kind or "none", 0) + 1
        return "".join(f'<span class="path path-{k}">{k} ×{c}</span>' for k, c in sorted(counts.items()))
    return "".join(
        f'<span class="path path-{kind or "none"}">{escape(peer)}: {kind or "no path"}</span>'
        for peer, kind in sorted(paths.items())
    )


def _text(value) -> str:
    return escape(str(value)) if value not in (None, "") else '<span class="muted">-</span>'


# ----- networks and access


def networks_live(networks: list[dict]) -> str:
    rows = "".join(
        f'<tr><td>{escape(n["name"])}</td><td>{escape(n["cidr"])}</td><td>{"yes" if n["approval_required"] else "no"}</td>'
        f'<td>{n["nodes"]}</td><td>{n["online"]}</td></tr>'
        for n in networks
    )
    return ('<h2>Networks</h2><table id="networks"><tr><th>Network</th><th>Addresses</th><th>Approval required</th>'
            f"<th>Nodes</th><th>Online</th></tr>{rows}</table>"
            '<p class="muted">Networks are set in coord.yaml (<code>networks</code>); a restart applies changes.</p>')


def access_live(networks: list[dict], nodes: list[dict], keys: list[dict]) -> str:
    """Who may reach whom and who may join: read-only, from coord.yaml, the nodes and the pre-auth keys."""
    rules = "".join(
        f'<tr><td>{escape(n["name"])}</td><td>every approved node of {escape(n["name"])} reaches every other '
        f"({_members(n, nodes)} now)</td><td>{_joining(n, keys)}</td></tr>"
        for n in networks
    )
    return ('<h2>Access rules</h2><table id="rules"><tr><th>Network</th><th>Who reaches whom</th><th>Who may join</th>'
            f"</tr>{rules}</table><p class=\"muted\">Nodes never see the nodes of another network. The access "
            "rules of coord.yaml (networks[].access) are not enforced by nodes yet nor shown here: a network is one "
            "flat segment, and revoking a node shuts it out of its network for good.</p>")


def _members(network: dict, nodes: list[dict]) -> str:
    count = sum(n["network"] == network["name"] and n["approved"] and not n["revoked"] for n in nodes)
    return "1 node" if count == 1 else f"{count} nodes"


def _joining(network: dict, keys: list[dict]) -> str:
    usable = sum(k["usable"] and k["network"] == network["name"] for k in keys)
    gate = "then waits for approval here" if network["approval_required"] else "and is in at once"
    return f"a machine with a usable pre-auth key of {escape(network['name'])} ({usable} now), {gate}"


# ----- pre-auth keys


def keys_live(keys: list[dict], now: float) -> str:
    rows = "".join(
        f'<tr><td><code>{escape(k["id"])}</code></td><td>{escape(k["network"])}</td>'
        f'<td>{"reusable" if k["reusable"] else "one-off"}{", ephemeral" if k["ephemeral"] else ""}</td>'
        f'<td>{_expiry(k["expires"], now)}</td><td>{k["uses"]}</td><td>{"yes" if k["usable"] else "no"}</td></tr>'
        for k in reversed(keys)
    )
    empty = '<tr><td colspan="6" class="muted">No keys yet.</td></tr>'
    return ('<h2>Keys</h2><table id="keys"><tr><th>Key id</th><th>Network</th><th>Kind</th><th>Expires</th>'
            f"<th>Nodes joined</th><th>Usable</th></tr>{rows or empty}</table>")


def _expiry(expires: float | None, now: float) -> str:
    if expires is None:
        return "never"
    left = expires - now
    if left <= 0:
        return "expired"
    return f"in {int(left // 3600)}h {int(left % 3600 // 60)}m" if left >= 3600 else f"in {int(left // 60)}m"


def key_form(networks: Iterable[str], csrf: str) -> str:
    choices = "".join(f'<option value="{escape(n)}">{escape(n)}</option>' for n in networks)
    expiries = "".join(f'<option value="{v}"{" selected" if v == "86400" else ""}>{t}</option>' for v, t in EXPIRIES)
    return (
        f'<h2>New pre-auth key</h2><form method="post" action="/keys" id="new-key">{_csrf(csrf)}<p>'
        f'<label>Network <select name="network">{choices}</select></label> '
        f'<label>Expires <select name="expires">{expiries}</select></label> '
        '<label><input type="checkbox" name="reusable" value="1"> reusable (any number of machines)</label> '
        '<label><input type="checkbox" name="ephemeral" value="1"> ephemeral (forgotten once offline)</label> '
        "<button>Create</button></p></form>"
    )


HOW_TO_JOIN = ("A machine joins with it: <code>meshvpn join --key</code> and this line "
               "(see docs/quickstart.md).")


def created_key(created: dict, join: str) -> str:
    """The new key, shown once: its join text and how a friend uses it."""
    return (
        f'<div id="created"><p class="notice">Key <code>{escape(created["id"])}</code> for network '
        f'<b>{escape(created["network"])}</b> created. It is shown only now: copy it and hand it over privately.</p>'
        f'<p class="secret" id="join-string">{escape(join)}</p>'
        f'<p>{HOW_TO_JOIN}</p></div>'
    )


def error_block(message: str) -> str:
    return f'<p class="error" role="alert">{escape(message)}</p>'
