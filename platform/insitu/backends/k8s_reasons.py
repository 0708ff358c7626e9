"""Why a job cannot run, read from what Kubernetes says of its pods and in its events.

Pure functions of the objects as the API server returns them (dicts): a reason a person
can act on for an image that cannot be pulled, a container that cannot start or keeps
crashing, one killed for memory (naming what to raise for that part of the job), pods no
node fits, pods the tenant's quota refuses, and the deadline.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from insitu.backends.base import LABEL_COMPONENT

_PULL_ERRORS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
_CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not value:
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def out_of_memory(component: str | None, name: str) -> str:
    """What to do about a container of ``component`` that the kernel killed for memory."""
    if component == "worker":
        return (
            f"a worker (pod {name}) ran out of memory (OOMKilled): ask for more "
            "resources.memory_per_worker, or select less per task"
        )
    if component == "runner":
        return (
            f"the job's runner (pod {name}) ran out of memory (OOMKilled): the analysis brought "
            "too much into it; reduce before returning (results are small), or ask the "
            "operator for more INSITU_KUBERNETES__RUNNER_MEMORY"
        )
    return (
        f"pod {name} ran out of memory (OOMKilled); ask the operator for more "
        "INSITU_KUBERNETES__SCHEDULER_MEMORY"
    )


def pod_problem(pod: dict[str, Any], now: datetime, pending_timeout: float) -> str | None:
    """A reason a person can act on, when a pod of the job cannot run; else None."""
    metadata = pod.get("metadata", {})
    name = metadata.get("name", "a pod")
    component = (metadata.get("labels") or {}).get(LABEL_COMPONENT)
    status = pod.get("status", {})
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason in _PULL_ERRORS:
            return (
                f"the image {container.get('image')!r} cannot be pulled ({reason}: "
                f"{waiting.get('message', 'no message')}); check its name and that the "
                "cluster may pull it"
            )
        if reason in _CONFIG_ERRORS:
            return f"pod {name} cannot start its container ({reason}: {waiting.get('message')})"
        terminated = (container.get("state") or {}).get("terminated") or {}
        # A container restarted after the kernel killed it runs again, but will again.
        last = (container.get("lastState") or {}).get("terminated") or {}
        if "OOMKilled" in (terminated.get("reason"), last.get("reason")):
            return out_of_memory(component, name)
        if reason == "CrashLoopBackOff":
            restarts = container.get("restartCount", 0)
            exited = f"exit code {last['exitCode']}" if "exitCode" in last else "no exit code"
            detail = f": {last['reason']}" if last.get("reason") else ""
            return (
                f"pod {name} keeps crashing (CrashLoopBackOff after {restarts} restarts, "
                f"{exited}{detail}); check that analysis.image runs the insitu runtime"
            )
    for condition in status.get("conditions") or []:
        if (
            condition.get("type") == "PodScheduled"
            and condition.get("status") == "False"
            and condition.get("reason") == "Unschedulable"
        ):
            since = _parse_time(condition.get("lastTransitionTime")) or now
            if (now - since).total_seconds() >= pending_timeout:
                return (
                    f"pod {name} could not be scheduled for {pending_timeout:.0f} s: "
                    f"{condition.get('message', 'no node fits')}; ask for fewer or smaller "
                    "workers, or add nodes in the data's zone"
                )
    return None


def runner_exit(pod: dict[str, Any] | None) -> tuple[int | None, str | None]:
    """Exit code and a reason from the runner pod's final state."""
    if pod is None:
        return None, None
    status = pod.get("status", {})
    if status.get("reason") == "DeadlineExceeded":
        return None, "the runner pod reached its deadline (activeDeadlineSeconds)"
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated:
            oom = terminated.get("reason") == "OOMKilled"
            name = pod.get("metadata", {}).get("name", "the runner's pod")
            return terminated.get("exitCode"), out_of_memory("runner", name) if oom else None
    return None, None


QUOTA_SETTING = "INSITU_KUBERNETES__QUOTA__*"
#: an event last seen longer ago than this is over (controllers repeat a failing create
#: well within it, and Kubernetes keeps events about an hour)
EVENT_FRESH_S = 300.0


def _event_time(event: dict[str, Any], now: datetime) -> datetime:
    """When an event (or the series it counts) first happened."""
    for value in (
        event.get("firstTimestamp"),
        event.get("eventTime"),
        (event.get("metadata") or {}).get("creationTimestamp"),
    ):
        moment = _parse_time(value)
        if moment is not None:
            return moment
    return now


def _last_seen(event: dict[str, Any], now: datetime) -> datetime:
    """When an event (or the series it counts) last happened."""
    series = event.get("series") or {}
    for value in (series.get("lastObservedTime"), event.get("lastTimestamp"),
                  event.get("eventTime")):  # fmt: skip
        moment = _parse_time(value)
        if moment is not None:
            return moment
    return _event_time(event, now)


def event_problem(
    events: list[dict[str, Any]], now: datetime, pending_timeout: float, missing_pods: int
) -> tuple[str | None, str | None]:
    """From the job's warning events: (why it cannot run, why it still waits).

    A refusal by the tenant's quota leaves no pod behind, only an event on what tried to
    make it (a worker's ReplicaSet, or the DaskJob for the operator's runner pod). It counts
    only while the job lacks pods (``missing_pods``), since a refused pod may be made later,
    when other jobs of the tenant end; after ``pending_timeout`` it fails the job.
    """
    waiting = None
    fresh = [e for e in events if (now - _last_seen(e, now)).total_seconds() <= EVENT_FRESH_S]
    for event in sorted(fresh, key=lambda e: _event_time(e, now)):
        message = " ".join(str(event.get("message") or "").split())
        reason = event.get("reason") or ""
        if "exceeded quota" in message and missing_pods > 0:
            since = _event_time(event, now)
            text = f"the tenant's quota refuses the job's pods ({message})"
            if (now - since).total_seconds() >= pending_timeout:
                return (
                    f"{text} for {pending_timeout:.0f} s: ask for fewer or smaller workers, "
                    f"wait for your other jobs to end, or ask the operator to raise "
                    f"{QUOTA_SETTING}",
                    None,
                )
            waiting = f"waiting: {text}"
        elif reason == "FailedScheduling":
            waiting = waiting or f"waiting for a node: {message}"
        elif event.get("type") == "Error":  # the operator's own failures (it retries)
            waiting = waiting or f"the Dask operator reports: {message}"
    return None, waiting
