"""The console in a real browser (Chromium through Playwright) against `courtyard
serve`: signing in, the first-party plugins' pages, live menus, uploads, keys, a viewer's
limits, a cross-site form post, accessibility, narrow and dark screens."""

from __future__ import annotations

import base64
import http.server
import os
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from browser_kit import DOCS_IMAGES, Console, axe_results, sign_in
from console_kit import app_archive, plugin_archive
from courtyard.testing import free_port

FIRST_PARTY = {
    "Vaults": "Vaults",
    "Releases": "Releases",
    "Queues": "Queues",
    "Runners": "Runners",
    "Projects": "Projects",
}


def sidebar_link(page: Any, title: str) -> Any:
    return page.locator("#sidebar").get_by_role("link", name=title, exact=True)


def test_sign_in_with_a_key_and_sign_out(page: Any, console: Console) -> None:
    page.goto("/console/apps")
    assert "/console/sign-in" in page.url
    page.get_by_label("API key or token").fill("cyk_0123456789abcdef_wrong")
    page.get_by_role("button", name="Sign in").click()
    assert "INVALID_API_KEY" in page.get_by_role("alert").inner_text()
    page.get_by_label("API key or token").fill(console.admin)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/apps")
    assert page.locator("h1").inner_text() == "Apps"
    cookie = next(c for c in page.context.cookies() if c["name"] == "courtyard_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/console/sign-in")
    page.goto("/")
    assert "/console/sign-in" in page.url


def test_a_cross_site_form_post_with_the_session_cookie_is_refused(
    page: Any, console: Console
) -> None:
    sign_in(page, console.admin)
    generation = _generation(console)
    with _attacker(console.url) as attacker:
        sent: list[dict[str, str]] = []
        page.on("request", lambda r: sent.append(r.all_headers()) if "/api/" in r.url else None)
        page.goto(attacker)
        page.get_by_role("button", name="Win a prize").click()
        page.wait_for_load_state()
        assert "CSRF_FAILED" in page.content()
    # The cookie went along (127.0.0.1 on another port is the same site): the Origin
    # check alone refused it.
    assert any("courtyard_session=" in h.get("cookie", "") for h in sent)
    assert any(h.get("origin", "").startswith("http://127.0.0.1:") for h in sent)
    assert _generation(console) == generation


@pytest.mark.slow
def test_every_first_party_menu_opens_its_page_in_the_shell(
    page: Any, browser: Any, console: Console, tmp_path: Path
) -> None:
    console.api.post("/api/vaults", json={"name": "payments", "description": "Card processor"})
    for key, value in {"STRIPE_KEY": "sk_live_0123456789abcdef", "REGION": "eu-west-1"}.items():
        console.api.post("/api/vaults/payments/entries", json={"key": key, "value": value})
    sign_in(page, console.admin)
    assert console.api.post("/api/plugins/reload").status_code == 200
    page.wait_for_selector("#events li:has-text('courtyard.generation.serving')")
    page.screenshot(path=str(tmp_path / "overview.png"))
    _save_doc_image(page, "console-overview.png")
    # Releases are per tenant (Stella Ops' API): an operator acting for one sees them.
    operator = console.key("admin", "acme-ops", tenant="acme")
    context = browser.new_context(base_url=console.url, viewport={"width": 1280, "height": 800})
    page = context.new_page()
    sign_in(page, operator)
    for title, heading in FIRST_PARTY.items():
        link = sidebar_link(page, title)
        assert link.locator("svg.icon").count() == 1  # its lucide icon
        link.click()
        page.wait_for_selector(f".cy-page h1:text-is('{heading}')")
        assert link.get_attribute("aria-current") == "page"
        assert page.url.endswith(f"/console/open{link.get_attribute('data-page')}")
        page.screenshot(path=str(tmp_path / f"{title.lower()}.png"))
        if title == "Vaults":
            text = page.locator("#content").inner_text()
            assert "STRIPE_KEY" in text and "sk_live_0123456789abcdef" not in text
            _save_doc_image(page, "console-plugin-page.png")
    page.wait_for_selector("#projects >> text=No projects yet.")  # the plugin's own script
    # A plugin page opened by its own address is a document in the console's style.
    page.goto("/queues/")
    assert page.locator("link[rel=stylesheet]").get_attribute("href") == (
        "/console/static/console.css"
    )
    page.get_by_role("link", name="Open in the console").click()
    page.wait_for_selector(".cy-page h1:text-is('Queues')")
    context.close()


@pytest.mark.slow
def test_an_uploaded_plugin_appears_in_the_menu_live_and_goes_when_removed(
    page: Any, console: Console
) -> None:
    sign_in(page, console.admin, "/console/plugins")
    page.evaluate("window.stillTheSamePage = true")
    page.set_input_files(
        "#plugin-file",
        files=[
            {
                "name": "hello.tgz",
                "mimeType": "application/gzip",
                "buffer": plugin_archive("hello-ui", "Hello UI"),
            }
        ],
    )
    page.get_by_role("button", name="Upload plugin").click()
    page.wait_for_selector("#plugin-result:has-text('Installed hello-ui 1.0.0')")
    sidebar_link(page, "Hello UI").wait_for()
    sidebar_link(page, "Hello UI").click()
    page.wait_for_selector(".cy-page h1:text-is('Hello UI')")

    # Another operator installs a plugin through the API: the event stream redraws the menu.
    answer = console.api.post(
        "/api/plugins/upload",
        files={"file": ("other.tgz", plugin_archive("hello-api", "Hello API"), "application/gzip")},
    )
    assert answer.status_code == 200, answer.text
    sidebar_link(page, "Hello API").wait_for()
    assert console.api.delete("/api/plugins/hello-api").status_code == 200
    sidebar_link(page, "Hello API").wait_for(state="detached")

    # Removing from the console asks first.
    page.goto("/console/plugins")
    page.evaluate("window.stillTheSamePage = true")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Remove hello-ui").click()
    page.wait_for_selector("#plugin-result:has-text('Removed hello-ui')")
    sidebar_link(page, "Hello UI").wait_for(state="detached")
    assert page.evaluate("window.stillTheSamePage") is True  # never reloaded

    # A refused upload shows the server's code and message.
    page.set_input_files(
        "#plugin-file",
        files=[{"name": "bad.tgz", "mimeType": "application/gzip", "buffer": b"not a tarball"}],
    )
    page.get_by_role("button", name="Upload plugin").click()
    result = page.locator("#plugin-result.bad")
    result.wait_for()
    assert re.match(r"[A-Z_]+: .+", result.inner_text()), result.inner_text()


@pytest.mark.slow
def test_an_app_upload_shows_progress_and_the_version_opens(page: Any, console: Console) -> None:
    sign_in(page, console.admin, "/console/apps")
    data = base64.b64encode(app_archive("site-ui", "1.4.0", size=400_000)).decode()
    page.evaluate(
        """(data) => {
          const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
          const file = new File([bytes], "site.tgz", {type: "application/gzip"});
          const transfer = new DataTransfer();
          transfer.items.add(file);
          const zone = document.querySelector(".drop");
          zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true}));
          zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
        }""",
        data,
    )
    page.wait_for_selector("#app-result:has-text('Installed site-ui 1.4.0')")
    progress = page.locator("form.upload progress")
    assert progress.is_visible() and progress.get_attribute("value") == "100"
    version = page.get_by_role("link", name=re.compile(r"^1\.4\.0"))
    version.wait_for()
    with page.context.expect_page() as opened:
        version.click()
    app_page = opened.value
    app_page.wait_for_load_state()
    assert app_page.locator("h1").inner_text() == "site-ui 1.4.0"
    app_page.close()
    # Uploading it again is refused with the server's code.
    page.evaluate(
        """(data) => {
          const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
          const transfer = new DataTransfer();
          transfer.items.add(new File([bytes], "site.tgz", {type: "application/gzip"}));
          document.querySelector("#app-file").files = transfer.files;
        }""",
        data,
    )
    page.get_by_role("button", name="Upload app").click()
    page.wait_for_selector("#app-result.bad:has-text('VERSION_EXISTS')")
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Delete site-ui@1.4.0").click()
    page.wait_for_selector("#app-result:has-text('Deleted site-ui@1.4.0')")
    assert "1.4.0" not in str(console.api.get("/api/apps/").json())


@pytest.mark.slow
def test_create_a_key_see_its_secret_once_and_revoke_it(page: Any, console: Console) -> None:
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(page, console.admin, "/console/keys")
    page.get_by_label("Name").fill("made-in-the-console")
    page.get_by_label("Role").select_option("viewer")
    page.get_by_role("button", name="Create key").click()
    secret_field = page.locator("#secret-value")
    secret_field.wait_for()
    secret = secret_field.input_value()
    assert secret.startswith("cyk_")
    page.get_by_role("button", name="Copy").click()
    assert page.evaluate("navigator.clipboard.readText()") == secret
    key_id = secret.split("_")[1]
    row = page.locator(f"tr[data-key='{key_id}']")
    row.wait_for()
    assert secret not in page.locator("#data").inner_html()  # listed without its secret
    assert console.api.get("/api/plugins/", headers={"X-API-Key": secret}).status_code == 200
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name=re.compile("^Revoke")).click()
    page.wait_for_selector(f"tr[data-key='{key_id}'] .badge:text-is('revoked')")
    refused = console.api.get("/api/plugins/", headers={"X-API-Key": secret})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "API_KEY_REVOKED"


@pytest.mark.slow
def test_a_viewer_sees_no_controls_and_the_server_refuses_them(page: Any, console: Console) -> None:
    sign_in(page, console.viewer, "/console/plugins")
    assert page.locator("form.upload").count() == 0
    assert page.get_by_role("button", name=re.compile("^(Remove|Reload)")).count() == 0
    assert sidebar_link(page, "API keys").count() == 0
    assert sidebar_link(page, "Vaults").count() == 1  # vaults:read is a viewer's
    page.goto("/console/apps")
    assert page.locator("form.upload").count() == 0
    page.goto("/console/keys")
    assert page.locator("form.create-key").count() == 0
    assert "AUTHORIZATION_FAILED" in page.locator("#content").inner_text()
    statuses = page.evaluate(
        """async () => {
          const post = (url, body) => fetch(url, {method: "POST", body}).then((a) => a.status);
          return [
            await post("/api/plugins/reload"),
            await post("/api/keys/", JSON.stringify({name: "x", roles: ["admin"]})),
            await fetch("/api/keys/0123456789abcdef", {method: "DELETE"}).then((a) => a.status),
          ];
        }"""
    )
    assert statuses == [403, 403, 403]


@pytest.mark.slow
def test_no_serious_accessibility_violation_narrow_and_dark(
    browser: Any, console: Console, tmp_path: Path
) -> None:
    context = browser.new_context(
        base_url=console.url, bypass_csp=True, viewport={"width": 1280, "height": 800}
    )
    page = context.new_page()
    serious = []
    page.goto("/console/sign-in")
    serious += _serious(axe_results(page), "sign-in")
    sign_in(page, console.admin)
    for path in ("/", "/console/plugins", "/console/apps", "/console/keys", "/console/audit"):
        page.goto(path)
        serious += _serious(axe_results(page), path)
    page.goto("/console/open/vaults/")
    page.wait_for_selector(".cy-page h1")
    serious += _serious(axe_results(page), "vaults")
    assert serious == []
    # Keyboard: the first Tab reaches the skip link, which is then visible.
    page.goto("/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"
    assert page.locator(".skip").bounding_box()["x"] >= 0
    context.close()

    dark = browser.new_context(
        base_url=console.url, viewport={"width": 375, "height": 740}, color_scheme="dark"
    )
    phone = dark.new_page()
    sign_in(phone, console.admin, "/console/plugins")
    # The dark background, once the stylesheet applies (under load it came after `load`).
    phone.wait_for_function("getComputedStyle(document.body).backgroundColor === 'rgb(15, 18, 23)'")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 375
    assert not phone.locator("#sidebar").is_visible()
    phone.get_by_role("button", name="Menu").click()
    assert phone.get_by_role("button", name="Menu").get_attribute("aria-expanded") == "true"
    sidebar_link(phone, "Queues").click()
    phone.wait_for_selector(".cy-page h1:text-is('Queues')")
    assert not phone.locator("#sidebar").is_visible()  # folded again after navigating
    phone.screenshot(path=str(tmp_path / "narrow-dark.png"), full_page=True)
    dark.close()


def _serious(results: dict[str, Any], where: str) -> list[str]:
    return [
        f"{where}: {v['id']} ({v['impact']}): {v['help']} {[n['target'] for n in v['nodes']]}"
        for v in results["violations"]
        if v["impact"] in ("serious", "critical")
    ]


def _generation(console: Console) -> int:
    html = console.api.get("/").text
    found = re.search(r"Generation</dt><dd>(\d+)</dd>", html)
    assert found is not None
    return int(found[1])


def _save_doc_image(page: Any, name: str) -> None:
    """Refresh one of the README's screenshots, when asked: a test run leaves the checkout
    as it found it (`COURTYARD_DOC_IMAGES=1 uv run pytest -m slow tests/runtime/console`)."""
    if os.environ.get("COURTYARD_DOC_IMAGES") == "1":
        DOCS_IMAGES.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS_IMAGES / name))


class _AttackerPage(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:
        body = (
            "<!doctype html><title>Prizes</title>"
            f'<form method="post" action="{self.target}/api/plugins/reload">'
            "<button>Win a prize</button></form>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _attacker:
    """Another site's page on another loopback port, with a form posting to the console's
    server."""

    def __init__(self, target: str) -> None:
        handler = type("Handler", (_AttackerPage,), {"target": target})
        self.port = free_port()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.port}/"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_without_chromium_the_browser_tests_skip_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import browser_kit

    monkeypatch.setattr(browser_kit, "CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(pytest.skip.Exception, match=r"Debian package chromium"):
        browser_kit.need_chromium()
