"""Reasons from Kubernetes events, and the runner's log followed a piece at a time.

Events are built in the shape the API server returns them (core/v1 Event, validated);
the log tail is fed what the kubelet answers to ``sinceTime`` with ``timestamps=true``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import kubernetes_validate
import pytest

from insitu.backends.k8s_logs import TRUNCATED, LogTail
from insitu.backends.k8s_reasons import event_problem

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=timezone.utc)
QUOTA = (
    'pods "j-0123456789ab-default-worker-7c9d" is forbidden: exceeded quota: insitu-quota, '
    "requested: limits.cpu=8, used: limits.cpu=12, limited: limits.cpu=16"
)


def _event(
    reason: str, message: str, *, ago: float, kind: str = "ReplicaSet", type_: str = "Warning"
) -> dict[str, Any]:
    first = (NOW - timedelta(seconds=ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"j-0123456789ab.{reason.lower()}", "namespace": "insitu-tenant-ada"},
        "involvedObject": {"kind": kind, "namespace": "insitu-tenant-ada",
                           "name": "j-0123456789ab-default-worker-7c9d"},
        "reason": reason,
        "message": message,
        "type": type_,
        "count": 3,
        "firstTimestamp": first,
        "lastTimestamp": NOW.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {"component": "replicaset-controller"},
    }  # fmt: skip
    kubernetes_validate.validate(event, "1.30", strict=True)
    return event


def test_a_quota_refusal_is_a_reason_to_wait_then_to_fail() -> None:
    fresh = [_event("FailedCreate", QUOTA, ago=30)]
    problem, waiting = event_problem(fresh, NOW, 300, missing_pods=1)
    assert problem is None
    assert (
        waiting is not None and "tenant's quota refuses" in waiting and "limits.cpu=16" in waiting
    )
    old = [_event("FailedCreate", QUOTA, ago=400)]
    problem, _ = event_problem(old, NOW, 300, missing_pods=1)
    assert problem is not None
    assert "exceeded quota: insitu-quota" in problem and "INSITU_KUBERNETES__QUOTA__" in problem


def test_a_quota_refusal_of_a_pod_made_since_is_forgotten() -> None:
    old = [_event("FailedCreate", QUOTA, ago=400)]
    assert event_problem(old, NOW, 300, missing_pods=0) == (None, None)


def test_the_operator_s_refused_runner_pod_counts_too() -> None:
    """The operator makes the runner pod itself; a refusal is an event on the DaskJob."""
    message = f"Handler 'daskjob_create_components' failed with an exception. Will retry. {QUOTA}"
    events = [_event("Error", message, ago=900, kind="DaskJob", type_="Error")]
    problem, _ = event_problem(events, NOW, 600, missing_pods=1)
    assert problem is not None and "exceeded quota" in problem


def test_scheduling_and_operator_troubles_say_why_a_job_waits() -> None:
    unschedulable = _event("FailedScheduling", "0/3 nodes are available: 3 Insufficient cpu.",
                           ago=20, kind="Pod")  # fmt: skip
    assert event_problem([unschedulable], NOW, 600, missing_pods=0) == (
        None,
        "waiting for a node: 0/3 nodes are available: 3 Insufficient cpu.",
    )
    operator = _event("Error", "Handler 'daskcluster_create' failed temporarily: timeout",
                      ago=5, kind="DaskCluster", type_="Error")  # fmt: skip
    _, waiting = event_problem([operator], NOW, 600, missing_pods=3)
    assert (
        waiting
        == "the Dask operator reports: Handler 'daskcluster_create' failed temporarily: timeout"
    )


# -- the runner's log, followed ------------------------------------------------------------


class Kubelet:
    """A container's log as the kubelet serves it: timestamped lines, ``sinceTime`` by the
    second, the last line maybe still being written."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, bytes]] = []
        self.asked: list[str | None] = []
        self.served = 0  # bytes sent in all

    def fetch(self, since: str | None) -> bytes:
        self.asked.append(since)
        start = since.rstrip("Z") if since else ""
        text = b"".join(
            stamp.encode() + b" " + line for stamp, line in self.lines if stamp[:19] >= start[:19]
        )
        self.served += len(text)
        return text


def test_the_log_is_read_a_piece_at_a_time_without_loss_or_repeats() -> None:
    kubelet = Kubelet()
    tail = LogTail(kubelet.fetch, max_bytes=1 << 20)
    kubelet.lines += [("2026-12-07T10:00:00.1Z", b"one\n"), ("2026-12-07T10:00:00.119Z", b"two\n")]
    tail.refresh()
    assert bytes(tail.data) == b"one\ntwo\n" and kubelet.asked == [None]
    # Same second, a later instant written with fewer digits; two lines at one instant.
    kubelet.lines += [("2026-12-07T10:00:00.12Z", b"three\n"),
                      ("2026-12-07T10:00:00.12Z", b"four\n"),
                      ("2026-12-07T10:00:01Z", b"fi")]  # fmt: skip
    tail.refresh()
    assert bytes(tail.data) == b"one\ntwo\nthree\nfour\n"  # "fi" is not a line yet
    assert kubelet.asked[-1] == "2026-12-07T10:00:00Z"
    kubelet.lines[-1] = ("2026-12-07T10:00:01Z", b"five\n")
    kubelet.lines.append(("2026-12-07T10:00:01Z", b"five\n"))  # the same text again, later
    tail.refresh()
    tail.refresh()
    assert bytes(tail.data) == b"one\ntwo\nthree\nfour\nfive\nfive\n"
    assert tail.read(4, 4) == b"two\n"
    assert kubelet.asked[-1] == "2026-12-07T10:00:01Z"


def test_a_long_log_is_fetched_once_not_on_every_read() -> None:
    kubelet = Kubelet()
    tail = LogTail(kubelet.fetch, max_bytes=64 << 20)
    for second in range(60):
        stamp = f"2026-12-07T10:00:{second:02d}.5Z"
        kubelet.lines += [(stamp, b"x" * 1023 + b"\n")] * 100
        tail.refresh()
    assert len(tail.data) == 60 * 100 * 1024
    # A whole-log read on every poll would have sent 60 * 61 / 2 * 100 KiB (30 times the
    # log); here each second's lines are sent twice at most (the last second is asked for
    # again).
    whole = sum(len(stamp) + 1 + len(line) for stamp, line in kubelet.lines)
    assert kubelet.served <= 2 * whole


@pytest.mark.parametrize("limit", [10, 16])
def test_a_log_past_its_limit_is_cut_with_a_note(limit: int) -> None:
    kubelet = Kubelet()
    tail = LogTail(kubelet.fetch, max_bytes=limit)
    kubelet.lines += [("2026-12-07T10:00:00Z", b"12345678\n")] * 3
    tail.refresh()
    assert bytes(tail.data).startswith(b"12345678\n1234567"[:limit])
    assert bytes(tail.data).endswith(TRUNCATED % limit) and tail.full
    kubelet.lines.append(("2026-12-07T10:00:02Z", b"more\n"))
    tail.refresh()
    assert b"more" not in tail.data
