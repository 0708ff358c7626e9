"""Keeps the web pages' benchmark runnable: a small course, both databases, no timed asserts."""

from __future__ import annotations

from pathlib import Path

import bench_web
import pytest

pytestmark = [pytest.mark.benchmark, pytest.mark.postgres, pytest.mark.slow,
              pytest.mark.timeout(300)]  # fmt: skip


def test_every_page_answers_on_a_course_s_database(tmp_path: Path) -> None:
    result = bench_web.run(tmp_path, participants=3, jobs=2, repeats=2,
                           kinds=["sqlite", "postgres"])  # fmt: skip
    for kind, figures in result["databases"].items():
        assert figures["jobs"] == 6, kind
        assert set(figures["pages"]) == set(bench_web.pages({"participant": "p", "admin": "a",
                                                             "job": "j"}))  # fmt: skip
        assert all(page["p50_ms"] > 0 for page in figures["pages"].values())
    assert "## The web UI's pages" in bench_web.report(result)
    assert len(result["goals"]) == 2
