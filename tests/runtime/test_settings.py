"""Settings: flag > COURTYARD_* environment > courtyard.toml > default."""

from pathlib import Path

import pytest
from courtyard.settings import Settings, load_settings
from courtyard_sdk import SettingsError


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings({}, environ={})
    assert (settings.host, settings.port, settings.strict) == ("127.0.0.1", 8000, False)
    assert settings.data_dir == tmp_path / "data"
    assert settings.plugin_folders == (tmp_path / "data" / "plugins",)
    assert settings.app_folders == (tmp_path / "data" / "apps",)
    assert settings.startup_timeout == 30


def test_precedence_flag_over_env_over_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "courtyard.toml").write_text('port = 1111\nhost = "0.0.0.0"\nlog_level = "debug"\n')
    from_file = load_settings({}, environ={})
    assert (from_file.port, from_file.host, from_file.log_level) == (1111, "0.0.0.0", "debug")
    from_env = load_settings({}, environ={"COURTYARD_PORT": "2222"})
    assert (from_env.port, from_env.host) == (2222, "0.0.0.0")
    from_flag = load_settings({"port": 3333, "host": None}, environ={"COURTYARD_PORT": "2222"})
    assert (from_flag.port, from_flag.host) == (3333, "0.0.0.0")


def test_env_lists_and_booleans(tmp_path):
    settings = load_settings(
        {},
        environ={
            "COURTYARD_PLUGIN_DIRS": f"{tmp_path}/a:{tmp_path}/b",
            "COURTYARD_APP_DIRS": f"{tmp_path}/apps",
            "COURTYARD_STRICT": "yes",
            "COURTYARD_ONLY_PLUGINS": "one, @s/two",
        },
    )
    assert settings.plugin_folders == (tmp_path / "a", tmp_path / "b")
    assert settings.app_folders == (tmp_path / "apps",)
    assert settings.strict is True
    assert settings.only_plugins == ("one", "@s/two")


def test_repeatable_flags_replace_env(tmp_path):
    settings = load_settings(
        {"plugin_dirs": (tmp_path / "x", tmp_path / "y")},
        environ={"COURTYARD_PLUGIN_DIRS": "/elsewhere"},
    )
    assert settings.plugin_folders == (tmp_path / "x", tmp_path / "y")


def test_file_paths_are_relative_to_the_file(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "site.toml").write_text('data_dir = "state"\nplugin_dirs = ["p1", "/abs"]\n')
    settings = load_settings({}, environ={}, config=conf / "site.toml")
    assert settings.data_dir == conf / "state"
    assert settings.plugin_folders == (conf / "p1", Path("/abs"))


def test_config_from_env_variable(tmp_path):
    (tmp_path / "c.toml").write_text("port = 4444\n")
    assert load_settings({}, environ={"COURTYARD_CONFIG": str(tmp_path / "c.toml")}).port == 4444


def test_plugin_tables(tmp_path):
    (tmp_path / "c.toml").write_text('[plugins."@acme/hello"]\ngreeting = "yo"\n')
    settings = load_settings({}, environ={}, config=tmp_path / "c.toml")
    assert settings.plugins == {"@acme/hello": {"greeting": "yo"}}


@pytest.mark.parametrize(
    ("file", "env", "message"),
    [
        ("colour = 1\n", {}, "colour: unknown setting"),
        ("port = 'many'\n", {}, "port: Input should be a valid integer"),
        ("port = 70000\n", {}, "port: Input should be less than or equal to 65535"),
        ("", {"COURTYARD_STRICT": "maybe"}, "COURTYARD_STRICT='maybe': expected true or false"),
        ("", {"COURTYARD_LOG_FORMAT": "xml"}, "log_format: Input should be 'text' or 'json'"),
        ("port = \n", {}, "not valid TOML"),
    ],
)
def test_bad_settings_are_named(tmp_path, file, env, message):
    (tmp_path / "c.toml").write_text(file)
    with pytest.raises(SettingsError, match=message.replace("(", r"\(")):
        load_settings({}, environ=env, config=tmp_path / "c.toml")


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings({}, environ={}, config=tmp_path / "nope.toml")


def test_settings_are_frozen():
    with pytest.raises(ValueError):
        Settings().port = 1  # type: ignore[misc]


def test_empty_list_variables_mean_not_set(tmp_path):
    settings = load_settings(
        {"data_dir": tmp_path}, environ={"COURTYARD_PLUGIN_DIRS": "", "COURTYARD_ONLY_PLUGINS": " "}
    )
    assert settings.plugin_folders == (tmp_path / "plugins",)
    assert settings.only_plugins is None


def test_file_paths_expand_home_and_docs_script_is_beside_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "c.toml").write_text('data_dir = "~/state"\ndocs_script = "assets/scalar.js"\n')
    settings = load_settings({}, environ={}, config=tmp_path / "c.toml")
    assert settings.data_dir == tmp_path / "home" / "state"
    assert settings.docs_script == str(tmp_path / "assets" / "scalar.js")


def test_upload_limits_come_from_settings():
    from courtyard.core.uploads import limits

    settings = load_settings(
        {},
        environ={
            "COURTYARD_UPLOAD_MAX_BYTES": "1000",
            "COURTYARD_UPLOAD_MAX_EXTRACTED_BYTES": "2000",
            "COURTYARD_UPLOAD_MAX_ENTRIES": "3",
            "COURTYARD_UPLOAD_MAX_RATIO": "4.5",
            "COURTYARD_UPLOAD_MAX_PATH_LENGTH": "50",
            "COURTYARD_UPLOAD_MAX_DEPTH": "6",
        },
    )
    bounds = limits(settings)
    assert (bounds.max_archive_bytes, bounds.max_extracted_bytes, bounds.max_entries) == (
        1000,
        2000,
        3,
    )
    assert (bounds.max_ratio, bounds.max_path_length, bounds.max_depth) == (4.5, 50, 6)


def test_serve_says_which_config_file_it_read(courtyard_server):
    server = courtyard_server(entry_points=False)
    assert server.config_path is not None
    assert f"configuration: {server.config_path.absolute()}" in server.log
