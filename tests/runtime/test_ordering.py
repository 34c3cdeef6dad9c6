from courtyard.ordering import dependency_order, dependents_of
from courtyard_sdk import parse_manifest


def manifests(**deps):
    out = {}
    for name, (required, optional) in deps.items():
        out[name] = parse_manifest(
            f'name = "{name}"\ndependencies = {list(required)!r}\n'
            f"optional_dependencies = {list(optional)!r}\n".replace("'", '"')
        )
    return out


def test_discovery_order_holds_among_free_plugins():
    order, excluded = dependency_order(manifests(c=((), ()), a=((), ()), b=((), ())))
    assert order == ["c", "a", "b"] and excluded == {}


def test_dependencies_first():
    order, _ = dependency_order(manifests(app=(["db"], ["cache"]), cache=((), ()), db=((), ())))
    assert order.index("db") < order.index("app")
    assert order.index("cache") < order.index("app")


def test_cycles_and_what_hangs_on_them():
    order, excluded = dependency_order(
        manifests(a=(["b"], ()), b=(["c"], ()), c=(["a"], ()), d=(["a"], ()), e=((), ()))
    )
    assert order == ["e"]
    assert excluded["a"] == "dependency cycle: a -> b -> c -> a"
    assert excluded["d"] == "dependency cycle: d -> a -> b -> c -> a"


def test_optional_cycle_member_missing_is_fine():
    order, excluded = dependency_order(manifests(a=((), ["ghost"]), b=(["a"], ())))
    assert order == ["a", "b"] and excluded == {}


def test_dependents_of_is_transitive():
    ms = manifests(a=((), ()), b=(["a"], ()), c=(["b"], ()), d=((), ["a"]))
    assert dependents_of("a", ms, ["a", "b", "c", "d"]) == ["b", "c"]
