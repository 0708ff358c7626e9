"""The fake Kubernetes API server, through the official client, behaves as the real one:
label and field selectors, resourceVersions, watches (from a version, expired, broken,
bookmarked, ended by the server's shutdown), Events, and pod logs with their options."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import kubernetes_validate
import pytest
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import ProtocolError

from k8s_fake_api import FakeCluster, api_client, daskjob_status, fake_cluster, pods
from test_k8s_manifests import operator_crd

NS = "insitu-tenant-ada"


@pytest.fixture
def cluster() -> Iterator[FakeCluster]:
    with fake_cluster(operator_crd("daskjob")) as fake:
        yield fake


@pytest.fixture
def core(cluster: FakeCluster) -> Any:
    return client.CoreV1Api(api_client(cluster.url))


def _pod(name: str, labels: dict[str, str] | None = None, namespace: str = NS) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": {"containers": [{"name": "main", "image": "registry.example.org/a:1"}]},
    }


def _events(stream: Iterator[dict[str, Any]], count: int) -> list[tuple[str, str]]:
    """The first ``count`` events of a watch, as (type, name)."""
    seen = []
    for event in stream:
        seen.append((event["type"], event["raw_object"]["metadata"].get("name", "")))
        if len(seen) == count:
            break
    return seen


@pytest.fixture
def labelled(cluster: FakeCluster) -> FakeCluster:
    cluster.put("pods", _pod("a", {"app": "web", "tier": "front"}))
    cluster.put("pods", _pod("b", {"app": "web", "tier": "back"}))
    cluster.put("pods", _pod("c", {"app": "db", "size": "5"}, namespace="other"))
    cluster.put("pods", _pod("d"))
    return cluster


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("", ["a", "b", "d", "c"]),
        ("app=web", ["a", "b"]),
        ("app==web", ["a", "b"]),
        ("app!=web", ["d", "c"]),
        ("app in (web, db)", ["a", "b", "c"]),
        ("app notin (web)", ["d", "c"]),
        ("tier", ["a", "b"]),
        ("!tier", ["d", "c"]),
        (" app = web , tier != front ", ["b"]),
        ("app in (db),!tier", ["c"]),
        ("size>3", ["c"]),
        ("size<3", []),
        ("example.org/team=x", []),
    ],
)
def test_label_selectors_select_as_the_api_server_does(
    labelled: FakeCluster, core: Any, selector: str, names: list[str]
) -> None:
    listed = core.list_pod_for_all_namespaces(label_selector=selector)
    assert [p.metadata.name for p in listed.items] == names


@pytest.mark.parametrize(
    "selector",
    ["app=web,", "app in ()", "app in (web", "app web", "!", "app=(web)", "a/b/c=d",
     "app=two words", "size>big", "in=web", "app=web)", "-app=web", "app=" + "x" * 64],
)  # fmt: skip
def test_a_malformed_label_selector_is_a_bad_request(
    labelled: FakeCluster, core: Any, selector: str
) -> None:
    with pytest.raises(ApiException) as refused:
        core.list_pod_for_all_namespaces(label_selector=selector)
    assert refused.value.status == 400
    assert json.loads(refused.value.body)["reason"] == "BadRequest"


def test_field_selectors_on_names_and_namespaces(labelled: FakeCluster, core: Any) -> None:
    def names(selector: str) -> list[str]:
        listed = core.list_pod_for_all_namespaces(field_selector=selector)
        return [p.metadata.name for p in listed.items]

    assert names("metadata.name=a") == ["a"]
    assert names("metadata.namespace!=other,metadata.name!=a") == ["b", "d"]
    assert names("metadata.namespace==other") == ["c"]
    for wrong in ("metadata.labels=x", "metadata.name"):
        with pytest.raises(ApiException) as refused:
            names(wrong)
        assert refused.value.status == 400


def test_lists_carry_the_cluster_resource_version(labelled: FakeCluster, core: Any) -> None:
    listed = json.loads(core.list_namespaced_pod(NS, _preload_content=False).data)
    assert listed["kind"] == "PodList" and listed["apiVersion"] == "v1"
    assert listed["metadata"]["resourceVersion"] == str(labelled.resource_version) == "5"
    versions = [int(p["metadata"]["resourceVersion"]) for p in listed["items"]]
    assert versions == [2, 3, 5]  # one cluster-wide counter; "c" (4) is in another namespace
    custom = client.CustomObjectsApi(api_client(labelled.url))
    jobs = custom.list_cluster_custom_object("kubernetes.dask.org", "v1", "daskjobs")
    assert jobs["kind"] == "DaskJobList" and jobs["apiVersion"] == "kubernetes.dask.org/v1"


def test_every_change_through_the_api_is_a_watch_event(cluster: FakeCluster, core: Any) -> None:
    """Create, server-side apply (a no-op apply is no change), delete, and the operator's
    status: each a new resourceVersion, and an event to watches from before it."""
    cluster.put("pods", _pod("seed", namespace="other"))
    start = core.list_namespaced_pod(NS).metadata.resource_version
    core.create_namespaced_pod(NS, _pod("p"))
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm"},
                  "data": {"k": "1"}}  # fmt: skip
    url = f"{cluster.url}/api/v1/namespaces/{NS}/configmaps/cm?fieldManager=t"
    headers = {"Content-Type": "application/apply-patch+yaml"}
    for data in ("1", "1", "2"):
        config_map["data"] = {"k": data}
        assert httpx.patch(url, json=config_map, headers=headers).is_success
    core.delete_namespaced_pod("p", NS)
    assert cluster.resource_version == int(start) + 4

    stream = watch.Watch().stream(
        core.list_namespaced_pod, NS, resource_version=start, timeout_seconds=5
    )
    assert _events(stream, 2) == [("ADDED", "p"), ("DELETED", "p")]
    stream = watch.Watch().stream(
        core.list_config_map_for_all_namespaces, resource_version=start, timeout_seconds=5
    )
    assert _events(stream, 2) == [("ADDED", "cm"), ("MODIFIED", "cm")]

    job = {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskJob",
           "metadata": {"name": "j", "namespace": NS}, "spec": {}}  # fmt: skip
    cluster.put("daskjobs", job)
    before = str(cluster.resource_version)
    cluster.set_status(NS, "j", daskjob_status("running"))
    custom = client.CustomObjectsApi(api_client(cluster.url))
    stream = watch.Watch().stream(
        custom.list_cluster_custom_object,
        "kubernetes.dask.org",
        "v1",
        "daskjobs",
        resource_version=before,
        timeout_seconds=5,
    )
    event = next(iter(stream))
    assert event["type"] == "MODIFIED" and event["object"]["status"]["jobStatus"] == "Running"
    assert event["object"]["metadata"]["resourceVersion"] == str(cluster.resource_version)


def test_a_watch_from_a_version_gets_only_later_matching_events(
    cluster: FakeCluster, core: Any
) -> None:
    cluster.put("pods", _pod("a", {"app": "web"}))
    start = core.list_pod_for_all_namespaces().metadata.resource_version
    cluster.put("pods", _pod("b", {"app": "web"}))
    cluster.put("pods", _pod("c", {"app": "db"}))
    cluster.put("pods", {**_pod("a", {"app": "web"}), "status": {"phase": "Running"}})
    cluster.remove("pods", NS, "b")
    stream = watch.Watch().stream(
        core.list_pod_for_all_namespaces,
        label_selector="app=web",
        resource_version=start,
        timeout_seconds=5,
    )
    seen = []
    for event in stream:
        seen.append((event["type"], event["object"].metadata.name))
        assert int(event["object"].metadata.resource_version) > int(start)
        if len(seen) == 3:
            break
    assert seen == [("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]


def test_a_watch_from_now_lists_the_current_objects_then_follows(
    cluster: FakeCluster, core: Any
) -> None:
    cluster.put_pods(pods("running"))
    stream = watch.Watch().stream(core.list_namespaced_pod, NS, timeout_seconds=5)
    assert _events(stream, 3) == [
        ("ADDED", "j-0123456789ab-default-worker-6b7c9"),
        ("ADDED", "j-0123456789ab-runner"),
        ("ADDED", "j-0123456789ab-scheduler"),
    ]
    cluster.put("pods", _pod("new"))
    assert _events(stream, 1) == [("ADDED", "new")]


def test_a_watch_from_a_compacted_version_is_gone(cluster: FakeCluster, core: Any) -> None:
    """410 Expired, which the official client raises (it retries only without a timeout)."""
    cluster.history_limit = 3
    for name in "abcde":
        cluster.put("pods", _pod(name))
    for version, ok in (("2", False), ("3", True)):  # a..e are 2..6; 4, 5 and 6 are kept
        stream = watch.Watch().stream(
            core.list_namespaced_pod, NS, resource_version=version, timeout_seconds=5
        )
        if ok:
            assert _events(stream, 3) == [("ADDED", "c"), ("ADDED", "d"), ("ADDED", "e")]
            continue
        with pytest.raises(ApiException) as gone:
            next(iter(stream))
        assert gone.value.status == 410
        assert "Expired: too old resource version: 2 (3)" in gone.value.reason

    cluster.compact()
    stale = watch.Watch().stream(
        core.list_namespaced_pod, NS, resource_version="5", timeout_seconds=5
    )
    with pytest.raises(ApiException, match="too old resource version: 5 \\(6\\)"):
        next(iter(stale))
    cluster.put("pods", _pod("f"))
    fresh = watch.Watch().stream(
        core.list_namespaced_pod, NS, resource_version="6", timeout_seconds=5
    )
    assert _events(fresh, 1) == [("ADDED", "f")]


def test_broken_watches_end_and_resume_where_they_were(cluster: FakeCluster, core: Any) -> None:
    cluster.put("pods", _pod("a"))
    began = time.monotonic()
    ended = watch.Watch().stream(core.list_namespaced_pod, NS, timeout_seconds=30)
    assert _events(ended, 1) == [("ADDED", "a")]
    cluster.break_watches()
    assert list(ended) == []
    assert time.monotonic() - began < 5

    dropped = watch.Watch().stream(core.list_namespaced_pod, NS, timeout_seconds=30)
    assert _events(dropped, 1) == [("ADDED", "a")]
    cluster.break_watches(abrupt=True)
    with pytest.raises(ProtocolError):
        list(dropped)

    # Without a timeout the official client reconnects from the last version it saw.
    resumed = watch.Watch().stream(core.list_namespaced_pod, NS)
    assert _events(resumed, 1) == [("ADDED", "a")]
    cluster.break_watches()
    cluster.put("pods", _pod("b"))
    assert _events(resumed, 1) == [("ADDED", "b")]
    assert [m for m, p in cluster.requests if "watch=true" in p.lower()] == ["GET"] * 4


def test_a_watch_that_times_out_sends_a_bookmark(cluster: FakeCluster, core: Any) -> None:
    cluster.put("pods", _pod("a"))
    stream = watch.Watch().stream(
        core.list_namespaced_pod,
        NS,
        resource_version="2",
        allow_watch_bookmarks=True,
        timeout_seconds=1,
    )
    (bookmark,) = list(stream)
    assert bookmark["type"] == "BOOKMARK"
    assert bookmark["raw_object"] == {"kind": "Pod", "apiVersion": "v1",
                                      "metadata": {"resourceVersion": "2"}}  # fmt: skip


def test_watches_are_chunked_json_lines_and_end_with_the_server(cluster: FakeCluster) -> None:
    cluster.put("pods", _pod("a"))
    url = f"{cluster.url}/api/v1/namespaces/{NS}/pods?watch=1&resourceVersion=0"
    with httpx.stream("GET", url) as response:
        assert response.headers["transfer-encoding"] == "chunked"
        line = next(response.iter_lines())
        assert json.loads(line)["type"] == "ADDED"

    seen: list[str] = []
    following = threading.Event()

    def follow(core: Any) -> None:
        for event in watch.Watch().stream(core.list_namespaced_pod, NS, timeout_seconds=30):
            seen.append(event["type"])
            following.set()

    with fake_cluster(operator_crd("daskjob")) as other:
        other.put("pods", _pod("a"))
        watching = threading.Thread(target=follow, args=(client.CoreV1Api(api_client(other.url)),))
        watching.start()
        assert following.wait(5)
    watching.join(timeout=5)
    assert not watching.is_alive() and seen == ["ADDED"]


def test_events_are_objects_selected_by_their_involved_object(
    cluster: FakeCluster, core: Any
) -> None:
    cluster.put("pods", _pod("p1"))
    start = str(cluster.resource_version)
    made = [
        cluster.event(NS, "Pod", "p1", "FailedScheduling", "0/3 nodes are available"),
        cluster.event(NS, "Pod", "p2", "BackOff", "Back-off pulling image"),
        cluster.event(NS, "DaskJob", "j", "Created", "cluster created", type="Normal"),
    ]
    for event in made:
        kubernetes_validate.validate(event, "1.30", strict=True)
    assert (
        made[0]["involvedObject"]["uid"] == cluster.objects[("pods", NS, "p1")]["metadata"]["uid"]
    )
    assert len({e["metadata"]["name"] for e in made}) == 3

    def reasons(selector: str, everywhere: bool = False) -> list[str]:
        listed = (
            core.list_event_for_all_namespaces(field_selector=selector)
            if everywhere
            else core.list_namespaced_event(NS, field_selector=selector)
        )
        return sorted(e.reason for e in listed.items)

    assert reasons("involvedObject.kind=Pod,involvedObject.name=p1") == ["FailedScheduling"]
    assert reasons("involvedObject.kind!=Pod") == ["Created"]
    assert reasons(f"involvedObject.namespace={NS}", everywhere=True) == [
        "BackOff",
        "Created",
        "FailedScheduling",
    ]
    with pytest.raises(ApiException) as refused:
        reasons("involvedObject.color=red")
    assert refused.value.status == 400 and "field label not supported" in refused.value.body
    stream = watch.Watch().stream(
        core.list_event_for_all_namespaces,
        field_selector="involvedObject.name=p2",
        resource_version=start,
        timeout_seconds=5,
    )
    event = next(iter(stream))
    assert event["type"] == "ADDED" and event["object"].reason == "BackOff"


LINES = [
    ("2026-11-25T09:00:00.900000000Z", b"one"),
    ("2026-11-25T09:00:01.500000000Z", b"two\n"),
    ("2026-11-25T09:00:02Z", b"three"),
]


def test_logs_since_a_time_with_timestamps_and_limits(cluster: FakeCluster, core: Any) -> None:
    cluster.put("pods", _pod("p"))
    cluster.log_lines("p", LINES)
    url = f"{cluster.url}/api/v1/namespaces/{NS}/pods/p/log"

    def log(**params: str) -> bytes:
        response = httpx.get(url, params=params)
        assert response.status_code == 200, response.text
        return response.content

    assert log() == b"one\ntwo\nthree\n"
    # Second precision: 09:00:01.5 is at or after 09:00:01, 09:00:00.9 is not.
    assert log(sinceTime="2026-11-25T09:00:01Z") == b"two\nthree\n"
    assert log(sinceTime="2026-11-25T10:00:01.999+01:00") == b"two\nthree\n"
    assert log(sinceTime="2026-11-25T09:00:01Z", timestamps="true") == (
        b"2026-11-25T09:00:01.500000000Z two\n2026-11-25T09:00:02Z three\n"
    )
    assert log(limitBytes="6") == b"one\ntw"
    read = core.read_namespaced_pod_log
    assert read("p", NS, tail_lines=1, timestamps=True, _preload_content=False).data == (
        b"2026-11-25T09:00:02Z three\n"
    )
    assert read("p", NS, container="main", limit_bytes=3, _preload_content=False).data == b"one"
    for wrong in ({"sinceTime": "yesterday"}, {"container": "other"}):
        assert httpx.get(url, params=wrong).status_code == 400

    two = _pod("q")
    two["spec"]["containers"].append({"name": "side", "image": "registry.example.org/b:1"})
    cluster.put("pods", two)
    cluster.logs["q/side"] = b"a\nb\nc\n"  # logged a millisecond apart from CREATED_AT
    with pytest.raises(ApiException) as unnamed:
        read("q", NS)
    assert unnamed.value.status == 400 and "choose one of: [main side]" in unnamed.value.body
    assert read("q", NS, container="side", tail_lines=2, _preload_content=False).data == b"b\nc\n"
    side = f"{cluster.url}/api/v1/namespaces/{NS}/pods/q/log?container=side&timestamps=1"
    assert httpx.get(side).content == (
        b"2026-11-25T09:00:00Z a\n2026-11-25T09:00:00.001Z b\n2026-11-25T09:00:00.002Z c\n"
    )
    assert httpx.get(f"{side}&sinceTime=2026-11-25T09:00:01Z").content == b""
    with pytest.raises(ApiException) as missing:
        read("nobody", NS)
    assert missing.value.status == 404
