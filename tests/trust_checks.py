"""What every backend must guarantee against a malicious participant's job.

Each ``check_*`` runs one attack of :mod:`attacks` through the API as the participant and
asserts the outcome the trust boundary promises: no token, no more bytes than the job's
egress budget (its cap plus a small allowance for its record), no file outside the
download folder, and accounting the server measured itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from insitu.client import Client
from insitu.trusted.report import MAX_FIGURE
from insitu.trusted.texts import ERROR_LIMIT, REASON_LIMIT

SERVER_NOTICE = 1024  # the server's own line where it cuts a log

Submit = Callable[[str, dict[str, Any]], dict[str, Any]]


def attack_code(folder: Path) -> Path:
    """The attacks as a code bundle folder."""
    from attacks import ATTACKS

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "attacks.py").write_text(ATTACKS)
    return folder


def owner_reads(api: Client, job_id: str, folder: Path) -> int:
    """Every byte the job's owner can get about the job: texts, events, log, files."""
    job = api.job(job_id)
    total = sum(len((job[k] or "").encode()) for k in ("error", "reason"))
    total += sum(len(e["reason"].encode()) for e in api.events(job_id))
    total += len(api.log_text(job_id).encode())
    if job["state"] == "succeeded":
        for path in api.download_all(job_id, folder):
            total += path.stat().st_size
    return total


def assert_within_budget(api: Client, job_id: str, folder: Path) -> dict[str, Any]:
    """The owner can read no more than the job's egress budget (and the server's cut line)."""
    read = owner_reads(api, job_id, folder)
    job = api.job(job_id)
    assert read <= job["egress"]["budget"] + SERVER_NOTICE, (read, job["egress"])
    return job


def check_secrets(job: dict[str, Any], found: dict[str, Any], admin_token: str) -> None:
    """Attack 1: the job found no token, database or other job's files."""
    assert job["state"] == "succeeded", job["error"]
    assert found["found"] == {}, sorted(found["found"])
    assert admin_token not in repr(found)
    assert "INSITU_HOME" not in found["env"]


def check_log(owner: Client, admin: Client, job_id: str, folder: Path) -> None:
    """Attack 2: the raw selection printed to the log reaches the owner only up to the budget."""
    job = owner.wait(job_id, timeout=120)
    assert job["state"] == "succeeded", job["error"]
    full = admin.log_text(job_id)
    assert len(full) > job["egress"]["budget"] * 2, "the attack did not print its raw data"
    served = owner.log_text(job_id)
    assert "[insitu: the log is cut here" in served
    assert owner.logs(job_id, len(served.encode()) + 10)["text"] == ""
    job = assert_within_budget(owner, job_id, folder)
    assert job["egress"]["log"] > 0 and job["egress"]["used"] <= job["egress"]["budget"]


def check_error(owner: Client, job_id: str, folder: Path) -> None:
    """Attack 3: the raw selection as the error text is cut to a few KiB, everywhere."""
    job = owner.wait(job_id, timeout=120)
    assert job["state"] == "failed" and job["error_kind"] == "analysis_failed"
    assert len(job["error"].encode()) <= ERROR_LIMIT and "more bytes cut" in job["error"]
    assert len(job["reason"].encode()) <= REASON_LIMIT
    assert all(len(e["reason"]) <= ERROR_LIMIT for e in owner.events(job_id))
    assert_within_budget(owner, job_id, folder)


def check_provenance(owner: Client, job_id: str, folder: Path) -> None:
    """Attack 4: a provenance.json the job wrote is never served; the job fails saying why."""
    job = owner.wait(job_id, timeout=120)
    assert job["state"] == "failed" and job["error_kind"] == "invalid_results", job
    assert "'provenance.json' is not a valid result name" in job["error"]
    assert_within_budget(owner, job_id, folder)


def check_forged_core_seconds(owner: Client, job_id: str) -> None:
    """Attack 5a: a negative core-seconds report is refused; the server's meter counts."""
    job = owner.wait(job_id, timeout=120)
    assert job["state"] == "failed" and "cannot accept" in job["error"], job
    assert "core_seconds" in job["error"]
    assert 0 < job["core_seconds"] < 1e6
    assert job["core_seconds_source"] in (
        "CPU time of the job's processes, sampled by the server",
        "CPU time of the job's containers (the engine's cgroup figures)",
    )


def check_forged_scan(owner: Client, job_id: str, folder: Path, source: str) -> None:
    """Attack 5b: a forged scan of 10^15 bytes does not lift the fraction-of-scan cap.

    ``source`` is how the server counted the scan instead: the store gateway's count, or
    the job's figure cut to what its selection holds.
    """
    job = owner.wait(job_id, timeout=120)
    assert job["state"] == "failed" and job["error_kind"] == "result_too_large", job
    assert job["bytes_scanned"] < 10**15 and job["bytes_scanned"] < MAX_FIGURE
    assert job["bytes_scanned"] <= 2 * job["bytes_selected"]
    assert source in (job["bytes_scanned_source"] or ""), job["bytes_scanned_source"]
    assert owner.results(job_id) == []
    assert_within_budget(owner, job_id, folder)


def check_forged_names(owner: Client, job_id: str, folder: Path) -> None:
    """Attack 5c: result files named to climb out of the download folder are refused."""
    job = owner.wait(job_id, timeout=120)
    assert job["state"] == "failed" and job["error_kind"] == "invalid_results", job
    assert owner.results(job_id) == []
    target = folder / "a" / "b"
    assert_within_budget(owner, job_id, target)
    outside = [p for p in folder.rglob("*") if p.is_file() and target not in p.parents]
    assert outside == []
