import pytest
from courtyard.apps.versions import InvalidRange, resolve, sort_versions

VERSIONS = [
    "0.0.3",
    "0.0.4",
    "0.2.3",
    "0.2.9",
    "0.3.0",
    "1.0.0",
    "1.2.0",
    "1.2.5",
    "1.4.0",
    "1.4.7",
    "1.10.0",
    "2.0.0-beta.1",
    "2.0.0rc1",
]


@pytest.mark.parametrize(
    ("wanted", "expected"),
    [
        (None, "1.10.0"),
        ("latest", "1.10.0"),
        ("1.2.0", "1.2.0"),
        ("1.2.5", "1.2.5"),
        ("1.2.4", None),
        ("1", "1.10.0"),
        ("1.4", "1.4.7"),
        ("1.3", None),
        ("0", "0.3.0"),
        ("^1.2", "1.10.0"),
        ("^1.2.6", "1.10.0"),
        ("^0.2", "0.2.9"),
        ("^0.2.3", "0.2.9"),
        ("^0.0.3", "0.0.3"),
        ("^0", "0.3.0"),
        ("~1.2", "1.2.5"),
        ("~1.2.1", "1.2.5"),
        ("~1", "1.10.0"),
        ("~1.4.8", None),
        ("^2", None),  # pre-releases are never picked by a range
        ("2.0.0-beta.1", "2.0.0-beta.1"),
        ("2.0.0b1", "2.0.0-beta.1"),
        ("2.0.0rc1", "2.0.0rc1"),
        ("3", None),
    ],
)
def test_resolution_table(wanted, expected):
    assert resolve(VERSIONS, wanted) == expected


def test_only_prereleases_latest_picks_the_highest():
    assert resolve(["1.0.0a1", "1.0.0b2"], "latest") == "1.0.0b2"


def test_nothing_installed():
    assert resolve([], None) is None


@pytest.mark.parametrize("wanted", ["abc", "^x", "~", "1.2.3.4.5.6x", ">=1", "1..2"])
def test_bad_ranges(wanted):
    with pytest.raises(InvalidRange):
        resolve(VERSIONS, wanted)


def test_sort_versions_is_numeric():
    assert sort_versions(["1.10.0", "1.2.0", "1.9.1", "weird"]) == [
        "1.2.0",
        "1.9.1",
        "1.10.0",
        "weird",
    ]
