"""The console's pages over an in-process client: the sidebar and its permissions, what
a viewer sees and may do, `root_app`, the audit filters, plugin pages as fragments, the
static files and the first page's weight."""

from __future__ import annotations

import re

from console_kit import add_notes, app_archive, signed_in
from courtyard.console.assets import icon
from courtyard.testing import write_plugin


def sidebar_titles(html: str) -> list[str]:
    nav = html.split('id="sidebar"', 1)[1].split("</nav>", 1)[0]
    return re.findall(r"<span>([^<]+)</span></a>", nav)


async def test_the_sidebar_shows_each_entry_to_those_who_may_open_it(courtyard, plugin_dir):
    add_notes(plugin_dir)
    rt = await courtyard()
    await rt.create_key(roles=["admin"])
    viewer = await signed_in(rt, await rt.create_key(roles=["viewer"]))
    admin = await signed_in(rt, await rt.create_key(roles=["admin"]))
    narrow = await signed_in(rt, await rt.create_key(permissions=["plugins:read"]))

    seen = sidebar_titles((await admin.get("/")).text)
    assert {"Notes", "Notes admin", "Help", "Vaults", "Queues", "Runners"} <= set(seen)
    assert {"Projects", "Releases", "API keys", "Audit log"} <= set(seen)
    seen = sidebar_titles((await viewer.get("/")).text)
    assert {"Notes", "Help", "Vaults", "Queues"} <= set(seen)
    assert "Notes admin" not in seen and "API keys" not in seen and "Audit log" not in seen
    seen = sidebar_titles((await narrow.get("/console/fragments/sidebar")).text)
    assert "Help" in seen and "Notes" not in seen and "Vaults" not in seen
    # Grouped by plugin, linking to the page inside the shell; unknown icons fall back.
    html = (await admin.get("/console/fragments/sidebar")).text
    assert '<h2 class="group" data-plugin="notes">notes</h2>' in html
    assert 'href="/console/open/notes/" data-page="/notes/"' in html
    assert html.count(str(icon("puzzle"))) >= 2  # Notes admin and Help have none vendored
    # And the server refuses what the sidebar hides.
    assert (await viewer.get("/notes/admin", headers={"HX-Request": "true"})).status_code == 403


async def test_a_plugin_page_is_a_fragment_in_the_shell_and_a_document_alone(courtyard, plugin_dir):
    add_notes(plugin_dir)
    rt = await courtyard()
    fragment = await rt.client.get("/notes/", headers={"HX-Request": "true"})
    assert fragment.status_code == 200
    assert fragment.text.startswith('<div class="cy-page" data-title="Notes"><h1>Notes</h1>')
    assert "&lt;all the notes&gt;" in fragment.text and "<html" not in fragment.text
    alone = await rt.client.get("/notes/")
    assert alone.text.startswith("<!doctype html>")
    assert '<link rel="stylesheet" href="/console/static/console.css">' in alone.text
    assert 'href="/console/open/notes/"' in alone.text
    for answer in (fragment, alone):
        policy = answer.headers["content-security-policy"]
        assert policy.startswith("default-src 'none'") and "script-src" not in policy
        assert answer.headers["vary"] == "HX-Request"
    shell = await rt.client.get("/console/open/notes/")
    assert shell.status_code == 200
    assert 'hx-get="/notes/" hx-trigger="load"' in shell.text
    assert "<title>Notes · Courtyard</title>" in shell.text


async def test_a_viewer_sees_no_controls_and_the_server_refuses_them(courtyard, plugin_dir):
    write_plugin(plugin_dir, "extra", 'version = "1.0.0"\n')
    rt = await courtyard()
    await rt.create_key(roles=["admin"])
    viewer = await signed_in(rt, await rt.create_key(roles=["viewer"], name="looker"))
    plugins = (await viewer.get("/console/plugins")).text
    assert "extra" in plugins
    assert "data-upload" not in plugins and 'data-method="DELETE"' not in plugins
    assert "Reload plugins" not in plugins
    apps = (await viewer.get("/console/apps")).text
    assert "data-upload" not in apps and "Delete" not in apps
    keys = await viewer.get("/console/keys")
    assert keys.status_code == 200 and "AUTHORIZATION_FAILED" in keys.text
    assert "data-create-key" not in keys.text
    audit = await viewer.get("/console/audit")
    assert "AUTHORIZATION_FAILED" in audit.text
    # The API refuses the same session whatever the page showed.
    archive = {"file": ("a.tgz", app_archive("site", "1.0.0"), "application/gzip")}
    for method, path, kwargs in [
        ("POST", "/api/plugins/upload", {"files": archive}),
        ("POST", "/api/plugins/reload", {}),
        ("DELETE", "/api/plugins/extra", {}),
        ("POST", "/api/apps/upload", {"files": archive}),
        ("POST", "/api/keys/", {"json": {"name": "x", "roles": ["admin"]}}),
    ]:
        answer = await viewer.request(method, path, **kwargs)
        assert answer.status_code == 403, (method, path)
        assert answer.json()["error"]["code"] == "AUTHORIZATION_FAILED"
    assert (plugin_dir / "extra").is_dir()


async def test_an_admin_sees_the_controls(courtyard, plugin_dir):
    write_plugin(plugin_dir, "extra", 'version = "1.0.0"\n')
    rt = await courtyard()
    plugins = (await rt.client.get("/console/plugins")).text  # open: everything allowed
    assert 'data-upload="/api/plugins/upload"' in plugins
    assert 'data-url="/api/plugins/extra"' in plugins and "Reload plugins" in plugins
    keys = (await rt.client.get("/console/keys")).text
    assert 'data-create-key="/api/keys/"' in keys and "No key yet" in keys


async def test_the_overview_lists_failed_plugins_with_their_message(courtyard, plugin_dir):
    write_plugin(plugin_dir, "broken", "", "raise RuntimeError('no <luck> here')\n")
    rt = await courtyard()
    upload = await rt.client.post(
        "/api/apps/upload",
        files={"file": ("a.tgz", app_archive("site", "1.2.0"), "application/gzip")},
    )
    assert upload.status_code == 200
    await rt.dispatcher.services.audit.flush()
    page = await rt.client.get("/")
    assert page.status_code == 200
    assert "1 failed" in page.text and "broken" in page.text
    assert "no &lt;luck&gt; here" in page.text and "no <luck>" not in page.text
    assert "<strong>site</strong> 1.2.0" in page.text
    assert "POST <code>/api/apps/upload</code>" in page.text  # the recent audit entries
    assert "Generation</dt><dd>1</dd>" in page.text
    apps = (await rt.client.get("/console/apps")).text
    assert 'href="/site@1.2.0/"' in apps and 'data-url="/api/apps/_/site/1.2.0"' in apps


async def test_root_app_takes_the_root_and_the_console_moves(courtyard):
    rt = await courtyard(root_app="site")
    answer = await rt.client.get("/")
    assert answer.status_code == 307 and answer.headers["location"] == "/site/"
    home = await rt.client.get("/console/")
    assert home.status_code == 200 and 'class="brand" href="/console/"' in home.text
    plain = await courtyard()
    moved = await plain.client.get("/console/")
    assert moved.status_code == 308 and moved.headers["location"] == "/"


async def test_bad_settings_for_the_console_are_refused():
    import pytest
    from courtyard.settings import load_settings
    from courtyard_sdk import SettingsError

    with pytest.raises(SettingsError, match="root_app"):
        load_settings({"root_app": "../etc"}, environ={})
    with pytest.raises(SettingsError, match="session_lifetime"):
        load_settings({"session_lifetime": 5}, environ={})


async def test_the_audit_page_filters_and_pages(courtyard):
    rt = await courtyard()
    for _ in range(3):
        assert (await rt.client.post("/api/plugins/reload")).status_code == 200
    await rt.dispatcher.services.audit.flush()
    page = await rt.client.get("/console/audit?identity=&method=POST&status=")
    assert page.status_code == 303 and page.headers["location"] == "/console/audit?method=POST"
    page = await rt.client.get("/console/audit?method=POST&limit=2")
    assert page.status_code == 200 and page.text.count("<code>/api/plugins/reload</code>") == 2
    following = re.search(r'href="/console/audit\?([^"]+)">Next page', page.text)
    assert following is not None and "cursor=" in following[1]
    rest = await rt.client.get("/console/audit?" + following[1].replace("&amp;", "&"))
    assert rest.text.count("<code>/api/plugins/reload</code>") == 1
    bad = await rt.client.get("/console/audit?status=abc")
    assert bad.status_code == 200 and "INVALID_PARAMETER" in bad.text


async def test_the_first_page_weighs_under_100_kb_and_works_offline(courtyard):
    rt = await courtyard()
    page = await rt.client.get("/")
    total = len(page.content)
    for asset in re.findall(r'(?:href|src)="(/console/static/[^"]+)"', page.text):
        answer = await rt.client.get(asset)
        assert answer.status_code == 200, asset
        total += len(answer.content)
    assert total < 100 * 1024, total
    assert not re.search(r'(?:src|href)="(?:https?:)?//', page.text)  # no CDN
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy


async def test_static_files_are_cached_by_etag(courtyard):
    rt = await courtyard()
    first = await rt.client.get("/console/static/htmx.min.js")
    assert first.status_code == 200 and first.headers["content-type"].startswith("text/javascript")
    again = await rt.client.get(
        "/console/static/htmx.min.js", headers={"If-None-Match": first.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""
    assert (await rt.client.get("/console/static/../settings.py")).status_code == 404
    assert (await rt.client.get("/console/static/nothing.js")).status_code == 404


def test_icons_are_the_vendored_svgs_with_a_fallback():
    rocket = str(icon("lucide:rocket"))
    assert rocket.startswith('<svg class="icon" aria-hidden="true" focusable="false"')
    assert "license" not in rocket
    assert str(icon("lucide:no-such-icon")) == str(icon("puzzle")) == str(icon(None))
    assert str(icon("../../etc/passwd")) == str(icon("puzzle"))


async def test_the_apps_page_shows_the_workers_of_asgi_apps(courtyard):
    import shutil
    from pathlib import Path

    if shutil.which("bwrap") is None:
        import pytest

        pytest.skip("bwrap is not installed (Debian package bubblewrap)")
    apps = Path(__file__).parents[3] / "apps"
    rt = await courtyard(app_dirs=[apps])
    before = (await rt.client.get("/console/apps")).text
    assert "hello-quart" in before and "none running" in before
    assert (await rt.client.get("/hello-quart@1.0.0/")).status_code == 200
    page = (await rt.client.get("/console/apps")).text
    row = page.split('href="/hello-quart@1.0.0/"', 1)[1].split("</tr>", 1)[0]
    assert re.search(r'<span class="badge (ok|warn)">\w+</span> pid \d+, 1 request\(s\)', row), row
