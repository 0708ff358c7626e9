"""Sizes and durations as people write them."""

from __future__ import annotations

import pytest

from insitu.errors import InvalidInput
from insitu.units import format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16MiB", 16 * 1024**2),
        ("2GB", 2 * 10**9),
        ("512k", 512_000),
        ("1.5 GiB", int(1.5 * 1024**3)),
        ("100", 100),
        (4096, 4096),
        ("0", 0),
        ("3tib", 3 * 1024**4),
    ],
)
def test_parse_size(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "16 parsecs", "-5", "", "MiB", True])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(InvalidInput):
        parse_size(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", 1800),
        ("1h30m", 5400),
        ("45s", 45),
        ("2d", 172800),
        ("500ms", 0.5),
        (90, 90),
        ("10", 10),
    ],
)
def test_parse_duration(text: str | int, expected: float) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["soon", "3 weeks", "0s", "-1", 0, "m"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(InvalidInput):
        parse_duration(text)  # type: ignore[arg-type]


def test_formatting() -> None:
    assert format_size(999) == "999 B"
    assert format_size(52_400_000) == "52.4 MB"
    assert format_size(None) == "-"
    assert format_duration(1.234) == "1.2 s"
    assert format_duration(185) == "3 min 5 s"
    assert format_duration(7260) == "2 h 1 min"
