"""The one bounded map: per-object memory stays within its limit, oldest first out."""

from __future__ import annotations

from pullhealth.bounded import BoundedDict


def test_oldest_set_is_dropped_first() -> None:
    remembered: BoundedDict[str, int] = BoundedDict(3)
    for i in range(5):
        remembered[f"uid-{i}"] = i
    assert list(remembered) == ["uid-2", "uid-3", "uid-4"]


def test_setting_a_key_again_makes_it_the_newest() -> None:
    remembered: BoundedDict[str, int] = BoundedDict(2)
    remembered["a"], remembered["b"] = 1, 2
    remembered["a"] = 3
    remembered["c"] = 4
    assert dict(remembered) == {"a": 3, "c": 4}


def test_pop_get_and_a_limit_of_at_least_one() -> None:
    remembered: BoundedDict[str, int] = BoundedDict(0)
    remembered["a"] = 1
    remembered["b"] = 2
    assert len(remembered) == 1 and remembered.get("a") is None
    assert remembered.pop("b") == 2 and remembered.pop("b", None) is None
