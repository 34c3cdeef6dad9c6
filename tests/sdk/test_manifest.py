"""plugin.toml: what is accepted, what is refused, and how settings are checked."""

import pytest
from courtyard_sdk import Manifest, ManifestError, SettingsError, parse_manifest
from courtyard_sdk.names import is_valid_name


@pytest.mark.parametrize("name", ["hello", "@acme/hello", "a.b_c-d", "x1", "@s/n.v"])
def test_valid_names(name):
    assert is_valid_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Hello",
        "@acme",
        "@acme/",
        "a/b",
        "../x",
        "..",
        ".hidden",
        "_x",
        "@/x",
        "a b",
        "@a/b/c",
        "x" * 215,
        "a..b",
        "naïve",
    ],
)
def test_invalid_names(name):
    assert not is_valid_name(name)


def test_minimal_manifest_defaults():
    m = parse_manifest('name = "@acme/hello-world"\n')
    assert m.base == "/hello-world"
    assert m.version == "0.0.0"
    assert m.module is None and m.enabled
    assert m.dependencies == () and m.menus == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "Bad"', "name: Value error, must be [@scope/]name"),
        ('name = "x"\nversion = "one"', "version: Value error, must be a PEP 440"),
        ('name = "x"\nbase = "/a/b"', "base: Value error"),
        ('name = "x"\nbase = "/a\\n"', "base: Value error"),
        ('name = "x"\nmodule = "plugin\\n"', "module: Value error"),
        ('name = "x"\nbase = "/api"', "/api is reserved"),
        ('name = "x"\nmodule = "a-b"', "module: Value error"),
        ('name = "x"\ndependencies = ["x"]', "cannot depend on itself"),
        ('name = "x"\ndependencies = ["Bad Name"]', "not a valid plugin name"),
        ('name = "x"\nrequires = ["not a req !"]', "not a PEP 508 requirement"),
        ('name = "x"\ncolour = "red"', "colour: unknown key"),
        ('name = "x"\n[[menus]]\ntitle = "T"\npath = "relative"', "menus.0.path"),
        ('name = "x"\n[[menus]]\ntitle = "T"\npath = "/p"\nicon = "database"', "set:name"),
        ('name = "x"\n[config.k]\ntype = "colour"', "config.k.type"),
        ('name = "x"\n[config.k]\ntype = "string"\nminimum = 1', "apply to integer and number"),
        ('name = "x"\n[config.k]\ntype = "integer"\ndefault = "3"', "default '3'"),
        ('name = "x"\n[config.enabled]\ntype = "boolean"', "'enabled' is reserved"),
        ('name = "x"\n[config.Bad-Key]\ntype = "string"', "lowercase identifiers"),
        ('name = "x"\n[config.k]\ntype = "integer"\nchoices = [1, "2"]', "choice '2' is not"),
        ('name = "x"\n[config.k]\ntype = "integer"\nchoices = [1]\nminimum = 0', "go together"),
        ("name = ", "not valid TOML"),
        ("", "name: Field required"),
    ],
)
def test_bad_manifests_are_refused_with_the_key(text, message):
    with pytest.raises(ManifestError, match=message.replace("[", r"\[").replace("(", r"\(")):
        parse_manifest(text, "x/plugin.toml")


def test_semver_prerelease_is_a_valid_version():
    assert parse_manifest('name = "x"\nversion = "1.0.0-beta.1"').version == "1.0.0-beta.1"


def test_menus_with_items():
    m = parse_manifest(
        'name = "db"\n[[menus]]\ntitle = "Database"\nicon = "lucide:database"\npath = "/database"\n'
        '[[menus.items]]\ntitle = "Tables"\npath = "/database/tables"\n'
    )
    assert m.menus[0].paths() == ["/database", "/database/tables"]
    assert m.menus[0].to_json()["items"][0] == {
        "title": "Tables",
        "icon": None,
        "path": "/database/tables",
    }


SCHEMA = """
name = "cfg"
[config.url]
type = "string"
required = true
[config.retries]
type = "integer"
default = 3
minimum = 0
maximum = 5
[config.ratio]
type = "number"
default = 0.5
[config.mode]
choices = ["fast", "safe"]
default = "safe"
[config.tags]
type = "array"
default = []
[config.debug]
type = "boolean"
default = false
"""


def test_settings_get_defaults():
    m: Manifest = parse_manifest(SCHEMA)
    assert m.validate_settings({"url": "http://x", "ratio": 1}) == {
        "url": "http://x",
        "retries": 3,
        "ratio": 1.0,
        "mode": "safe",
        "tags": [],
        "debug": False,
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "url: Field required"),
        ({"url": "u", "retries": 9}, "retries: Input should be less than or equal to 5"),
        ({"url": "u", "retries": "3"}, "retries: Input should be a valid integer"),
        ({"url": "u", "mode": "slow"}, "mode: Input should be 'fast' or 'safe'"),
        ({"url": "u", "debug": "yes"}, "debug: Input should be a valid boolean"),
        ({"url": "u", "ratio": True}, "ratio: Input should be a valid number"),
        ({"url": "u", "extra": 1}, "extra: unknown setting"),
    ],
)
def test_bad_settings_name_plugin_and_key(values, message):
    with pytest.raises(SettingsError, match=f"plugin cfg: invalid settings: .*{message}"):
        parse_manifest(SCHEMA).validate_settings(values)
