"""The web console in a real headless browser: Debian's chromium driven by playwright.

The narrated script, all on 127.0.0.1: a coord with its console on; alice, bob and carol join
`home` over the real control channel and report their paths as their cores do; dave joins
`office` and waits for approval. The browser logs in, sees the three nodes and their paths,
approves dave and sees him come online, sees erin appear by herself (the page refreshes live),
then revokes bob and sees him go.

Set MESHVPN_CONSOLE_SCREENSHOTS=DIR to keep a screenshot of each step (docs/console.md uses them).
"""

import asyncio
import os
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

WAIT_MS = 15000
"""How long a step may take to show: a few live refreshes (2 s apart) on a loaded machine."""
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def _needed(what: str) -> None:
    """Skip without a browser on a developer machine; fail under CI, whose set-up installs it."""
    reason = f"{what} is missing (`make setup` installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        _needed("Debian's chromium")
    return path


@pytest.fixture
def playwright_api():
    try:
        from playwright import async_api
    except ImportError:
        _needed("playwright (the test extra)")
    return async_api


class Screenshots:
    """Numbered screenshots of each step, kept only when asked for."""

    def __init__(self, page):
        self.page = page
        folder = os.environ.get("MESHVPN_CONSOLE_SCREENSHOTS")
        self.folder = Path(folder) if folder else None

    async def take(self, name: str) -> None:
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            await self.page.screenshot(path=str(self.folder / f"console-{name}.png"), full_page=True)


def test_log_in_see_paths_approve_watch_live_revoke(console_mesh, chromium, playwright_api):
    async def scenario():
        async with console_mesh as mesh, playwright_api.async_playwright() as driver:
            alice, bob, carol = [await mesh.connect(name) for name in ("alice", "bob", "carol")]
            mesh.report_paths(alice, bob="direct", carol="relay")
            mesh.report_paths(bob, alice="direct", carol="lan")
            mesh.report_paths(carol, alice="relay", bob="lan")
            dave = await mesh.connect("dave", "office")
            browser = await driver.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 720})
                await walk_through(playwright_api.expect, page, mesh, dave)
            finally:
                await browser.close()

    asyncio.run(scenario())


async def walk_through(expect, page, mesh, dave) -> None:
    expect.set_options(timeout=WAIT_MS)
    page.set_default_timeout(WAIT_MS)
    shots = Screenshots(page)
    await page.goto(mesh.url)
    await expect(page).to_have_url(f"{mesh.url}/login")
    await shots.take("1-login")
    await page.get_by_label("Password").fill(mesh.PASSWORD)
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(f"{mesh.url}/nodes")

    nodes = page.locator("#nodes tr[data-node]")
    await expect(nodes).to_have_count(3)
    await expect(row(page, "alice").locator(".paths")).to_have_text("bob: directcarol: relay")
    await expect(row(page, "bob").locator(".paths")).to_have_text("alice: directcarol: lan")
    await expect(row(page, "carol").locator(".paths")).to_have_text("alice: relaybob: lan")
    for name, address in (("alice", "100.64.0.2"), ("bob", "100.64.0.3"), ("carol", "100.64.0.4")):
        await expect(row(page, name)).to_contain_text(address)
        await expect(row(page, name).locator(".state")).to_have_text("online")
    await expect(page.locator("#pending tr[data-node='dave'] .state")).to_have_text("waiting")
    await shots.take("2-nodes")

    await page.locator("#pending tr[data-node='dave']").get_by_role("button", name="Approve").click()
    await expect(page.get_by_role("status")).to_have_text("dave (office, 100.65.0.2) approved.")
    await expect(row(page, "dave").locator(".state")).to_have_text("online")
    await expect(page.locator("#pending")).to_have_count(0)
    registered, _ = await dave.registration(5)
    assert registered.name == "dave"

    erin = await mesh.connect("erin")
    mesh.report_paths(erin, alice="direct")
    await expect(row(page, "erin").locator(".paths")).to_have_text("alice: direct")
    await expect(nodes).to_have_count(5)
    await shots.take("3-approved-and-live")

    await row(page, "bob").get_by_role("button", name="Revoke").click()
    await expect(page.get_by_role("status")).to_have_text("bob (home, 100.64.0.3) revoked.")
    await expect(row(page, "bob")).to_have_count(0)
    await expect(nodes).to_have_count(4)
    await expect(page.locator("#revoked")).to_contain_text("bob (home)")
    assert mesh.node("bob")["revoked"] is True
    await shots.take("4-revoked")

    await page.goto(f"{mesh.url}/keys")
    await page.get_by_label("reusable").check()
    await page.get_by_role("button", name="Create").click()
    await expect(page.locator("#join-string")).to_contain_text("mvk-")
    await shots.take("5-key")
    await page.goto(f"{mesh.url}/access")
    await expect(page.locator("#rules")).to_contain_text("every approved node of office reaches every other")
    await shots.take("6-access")


def row(page, name: str):
    return page.locator(f"#nodes tr[data-node='{name}']")
