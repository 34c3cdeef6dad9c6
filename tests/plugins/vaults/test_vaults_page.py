"""The page at the plugin's base, and its menu."""

from __future__ import annotations

from courtyard_vaults.validation import mask
from vaults_kit import fill, secret


async def test_the_page_shows_masked_entries_and_escapes_everything(start, master_key):
    rt = await start()
    value = secret("sk")
    await fill(
        rt.client,
        "api-keys",
        {"OPENAI_API_KEY": value, "TINY": "abc"},
        description='<script>alert("x")</script> & more',
    )
    answer = await rt.client.post(
        "/api/vaults/api-keys/entries",
        json={"key": "GREETING", "value": "<b>hello</b>", "is_secret": False},
    )
    assert answer.status_code == 200
    await fill(rt.client, "empty", {})

    page = await rt.client.get("/vaults/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src" not in page.headers["content-security-policy"]
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    html = page.text
    assert "<h2>api-keys</h2>" in html and "<h2>empty</h2>" in html
    assert "OPENAI_API_KEY" in html
    assert mask(value) in html
    assert value not in html and value[2:-2] not in html
    assert "<code>****</code>" in html  # abc
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; more" in html
    assert "&lt;b&gt;hello&lt;/b&gt;" in html and "<b>hello</b>" not in html


async def test_an_empty_page(start, master_key):
    rt = await start()
    page = await rt.client.get("/vaults/")
    assert page.status_code == 200
    assert "No vaults yet" in page.text
    assert (await rt.client.get("/vaults")).status_code in (301, 308)


async def test_the_menu(start, master_key):
    rt = await start()
    loaded = (await rt.client.get("/api/plugins/loaded")).json()
    vaults = next(p for p in loaded if p["name"] == "vaults")
    assert vaults["base"] == "/vaults"
    assert vaults["menus"] == [{"title": "Vaults", "icon": "lucide:key-round", "path": "/vaults"}]
