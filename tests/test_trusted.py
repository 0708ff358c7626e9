"""The trusted side's pieces on their own: texts, egress budgets, result listings, reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from insitu.db.models import Job
from insitu.runtime.results import RECORD_ALLOWANCE
from insitu.runtime.workspace import OUTCOME_FILE, Workspace
from insitu.services.egress import egress_of
from insitu.trusted.report import MAX_REPORT_BYTES, JobReport, RefusedReport, read_outcome
from insitu.trusted.results import RejectedResults, list_results, records
from insitu.trusted.texts import bounded


def test_texts_are_cut_by_bytes_and_say_so() -> None:
    assert bounded("short", 100) == "short"
    cut = bounded("é" * 5000, 512)
    assert cut is not None and len(cut.encode()) <= 512 and "more bytes cut" in cut


def test_a_running_jobs_budget_grows_with_its_scan_and_an_ended_one_keeps_its_own() -> None:
    running = Job(state="running", result_cap_bytes=1_000_000, bytes_scanned=10_000)
    assert egress_of(running, 0.5).budget == 5_000 + RECORD_ALLOWANCE
    assert egress_of(running).budget == 1_000_000 + RECORD_ALLOWANCE
    ended = Job(
        state="succeeded",
        result_cap_bytes=1_000_000,
        bytes_scanned=10_000,
        accounting={"egress": {"budget": 123, "source": "settled", "results": 100, "log": 20}},
    )
    egress = egress_of(ended, 0.5)
    assert (egress.budget, egress.used, egress.room_for("log")) == (123, 120, 23)


def _workspace(tmp_path: Path, files: dict[str, bytes]) -> Workspace:
    workspace = Workspace(f"file://{tmp_path}/ws")
    for name, data in files.items():
        workspace.write_bytes(name, data)
    return workspace


def test_results_are_listed_and_hashed_by_the_server(tmp_path: Path) -> None:
    import io

    import numpy as np

    array = io.BytesIO()
    np.save(array, np.zeros((3, 4), np.float32))
    workspace = _workspace(
        tmp_path, {"results/mean.npy": array.getvalue(), "results/stats.json": b"{}"}
    )
    listed = list_results(workspace)
    assert [item.filename for item in listed] == ["mean.npy", "stats.json"]
    rows = {row["key"]: row for row in records(workspace, listed)}
    assert rows["mean"]["shape"] == [3, 4] and rows["mean"]["dtype"] == "float32"
    assert rows["stats"]["size"] == 2 and len(rows["stats"]["sha256"]) == 64


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("results/provenance.json", "not a valid result name"),
        ("results/..npy", "not a valid result name"),
        ("results/x.exe", "no result extension"),
        ("results/sub/x.npy", "is a folder"),
    ],
)
def test_anything_else_in_the_results_folder_is_refused(
    tmp_path: Path, name: str, why: str
) -> None:
    workspace = _workspace(tmp_path, {name: b"x", "results/ok.json": b"1"})
    with pytest.raises(RejectedResults, match=why):
        list_results(workspace)


def test_two_results_with_one_key_are_refused(tmp_path: Path) -> None:
    workspace = _workspace(tmp_path, {"results/a.json": b"1", "results/a.png": b"2"})
    with pytest.raises(RejectedResults, match="two results are named 'a'"):
        list_results(workspace)


def test_reports_are_validated_and_size_limited(tmp_path: Path) -> None:
    workspace = _workspace(tmp_path, {OUTCOME_FILE: b'{"ok": true, "bytes_scanned": 5}'})
    report = read_outcome(workspace)
    assert isinstance(report, JobReport) and report.bytes_scanned == 5
    for body, problem in (
        (b'{"ok": true, "core_seconds": -1}', "core_seconds"),
        (b'{"ok": true, "timings": {"x": 1e300}}', "timings"),
        (b"not json", "outcome.json"),
        (b" " * (MAX_REPORT_BYTES + 1), "over the"),
    ):
        workspace.write_bytes(OUTCOME_FILE, body)
        refused = read_outcome(workspace)
        assert isinstance(refused, RefusedReport) and problem in refused.problem, refused
