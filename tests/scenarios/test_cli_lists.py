"""scenarios/cli_lists.py: the one parser of comma-separated name options (pure)."""

import pytest

from scenarios.cli_lists import parse_names


def test_names_in_order_with_spaces_trimmed() -> None:
    assert parse_names(" a, b ,c", "--x", ("a", "b", "c"), "thing") == ["a", "b", "c"]


def test_unknown_and_repeated_names_are_named() -> None:
    with pytest.raises(ValueError, match=r"--x: unknown thing 'd'; allowed: a, b$"):
        parse_names("a,d", "--x", ("a", "b"), "thing")
    with pytest.raises(ValueError, match="--x: a given more than once"):
        parse_names("a,b,a", "--x", ("a", "b"), "thing")


def test_empty_is_an_error_unless_none_is_allowed() -> None:
    with pytest.raises(ValueError, match="--x: no thing given"):
        parse_names(" , ", "--x", ("a",), "thing")
    assert parse_names("none", "--x", ("a",), "thing", allow_none=True) == []
    assert parse_names("", "--x", ("a",), "thing", allow_none=True) == []
    with pytest.raises(ValueError, match="allowed: a or none"):
        parse_names("b", "--x", ("a",), "thing", allow_none=True)
