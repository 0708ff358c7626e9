"""The store gateway: its policy as a pure function, and the gateway itself against SeaweedFS.

A job's client holds only a placeholder key; the gateway signs what it allows with the
platform's key, refuses the rest with an S3 error, and counts the bytes it lets through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import numpy as np
import pytest
import zarr
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from zarr.storage import FsspecStore

from insitu import objectstore
from insitu.config import Settings
from insitu.gateway.policy import Policy, Prefix
from insitu.gateway.server import ADMIN_HEADER, Gateway, Upstream, decode_aws_chunked, serve
from insitu.relay import Address
from insitu.runtime.reader import open_selection
from insitu.seaweedfs import DATA_BUCKET, RESULTS_BUCKET

pytestmark = pytest.mark.timeout(120)

POLICY = Policy(Prefix.of("s3://data/lab/movie.zarr"), Prefix.of("s3://results/jobs/j-1"))


# -- the policy ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "bucket", "key", "query", "allowed", "scan"),
    [
        ("GET", "data", "lab/movie.zarr/zarr.json", {}, True, True),
        ("HEAD", "data", "lab/movie.zarr/c/0/0/0", {}, True, True),
        ("GET", "data", "", {"list-type": "2", "prefix": "lab/movie.zarr/"}, True, False),
        ("GET", "results", "jobs/j-1/job.json", {}, True, False),
        ("PUT", "results", "jobs/j-1/results/mean.npy", {}, True, False),
        ("PUT", "results", "jobs/j-1/outcome.json", {}, True, False),
        ("POST", "results", "jobs/j-1/results/big.npy", {"uploads": ""}, True, False),
        ("PUT", "results", "jobs/j-1/b", {"partNumber": "1", "uploadId": "u"}, True, False),
    ],
)  # fmt: skip
def test_the_policy_allows_the_jobs_own_reads_and_writes(
    method: str, bucket: str, key: str, query: dict[str, str], allowed: bool, scan: bool
) -> None:
    decision = POLICY.check(method, bucket, key, query)
    assert (decision.allowed, decision.scan) == (allowed, scan), decision.reason


@pytest.mark.parametrize(
    ("method", "bucket", "key", "query", "why"),
    [
        ("GET", "data", "lab/other.zarr/zarr.json", {}, "outside what this job may do"),
        ("GET", "data", "lab/movie.zarr2/zarr.json", {}, "outside"),
        ("GET", "results", "jobs/j-2/outcome.json", {}, "outside"),
        ("GET", "data", "", {"list-type": "2", "prefix": "lab/"}, "listing s3://data/lab/"),
        ("GET", "", "", {}, "listing buckets"),
        ("PUT", "data", "lab/movie.zarr/c/0/0/0", {}, "outside"),
        ("PUT", "results", "jobs/j-1/job.json", {}, "the server's"),
        ("PUT", "results", "jobs/j-1/code.tar.gz", {}, "the server's"),
        ("DELETE", "results", "jobs/j-2/results/x.npy", {}, "outside"),
        ("GET", "results", "jobs/j-1/results/../../j-2/outcome.json", {}, "'..'"),
        ("GET", "results", "jobs/j-1//x", {}, "empty path segments"),
        ("PUT", "results", "jobs/j-1/x", {"x-amz-copy-source": "data/s"}, "copying"),
        ("POST", "results", "jobs/j-1/x", {"delete": ""}, "with this query"),
        ("GET", "data", "lab/movie.zarr/zarr.json", {"acl": ""}, "acl"),
        ("PATCH", "results", "jobs/j-1/x", {}, "method PATCH"),
    ],
)  # fmt: skip
def test_the_policy_refuses_everything_else_saying_why(
    method: str, bucket: str, key: str, query: dict[str, str], why: str
) -> None:
    decision = POLICY.check(method, bucket, key, query)
    assert not decision.allowed and why in decision.reason


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"-6\r\nAAAAAAAA", "bad chunk size"),  # a negative size would loop for ever
        (b"+5\r\nhello\r\n0\r\n\r\n", "bad chunk size"),
        (b"5\r\nhelloXX0\r\n\r\n", "cut short"),  # no CRLF after the data
        (b"4\r\nabcd\r\n" * 3 + b"0\r\n\r\n", "over 8 bytes"),
    ],
)
def test_malformed_aws_chunked_bodies_are_refused(body: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        decode_aws_chunked(body, limit=8)


def test_location_with_another_query_is_not_a_listing() -> None:
    assert POLICY.check("GET", "data", "", {"location": ""}).allowed
    assert not POLICY.check("GET", "data", "", {"location": "", "list-type": "2"}).allowed


def test_aws_chunked_bodies_are_decoded() -> None:
    body = (
        b"5;chunk-signature=abc\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:AAAA\r\n\r\n"
    )
    assert decode_aws_chunked(body) == b"hello world"
    with pytest.raises(ValueError, match="cut short"):
        decode_aws_chunked(b"10\r\nshort")


# -- the gateway in front of a real S3 server ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Running:
    """A gateway served from a thread of the test, on a loopback port."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.port = _free_port()
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def main() -> None:
            started = asyncio.Event()
            serving = asyncio.create_task(
                serve(gateway, Address("tcp", "127.0.0.1", self.port), started)
            )
            await started.wait()
            ready.set()
            await serving

        self.main = self.loop.create_task(main())
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert ready.wait(10), "the gateway did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self.main)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.main.cancel)
        self.thread.join(10)


@pytest.fixture
def store(s3_settings: Settings, movie: tuple[Path, np.ndarray]) -> dict[str, Any]:
    """The test movie in the data bucket and a job workspace in the results bucket."""
    prefix = uuid.uuid4().hex[:8]
    url = f"s3://{DATA_BUCKET}/{prefix}/movie.zarr"
    source = zarr.open_array(movie[0], mode="r")
    options = objectstore.platform_options(s3_settings, url)
    target = zarr.create_array(
        FsspecStore.from_url(url, storage_options=options, read_only=False),
        shape=source.shape,
        chunks=source.chunks,
        dtype=source.dtype,
        dimension_names=["t", "y", "x"],
    )
    target[:] = movie[1]
    workspace = f"s3://{RESULTS_BUCKET}/jobs/j-{prefix}"
    admin = objectstore.boto_client(s3_settings)
    admin.put_object(Bucket=RESULTS_BUCKET, Key=f"jobs/j-{prefix}/job.json", Body=b"{}")
    listed = admin.list_objects_v2(Bucket=DATA_BUCKET, Prefix=f"{prefix}/movie.zarr/")
    sizes = {o["Key"]: o["Size"] for o in listed["Contents"]}
    return {"url": url, "workspace": workspace, "prefix": prefix, "data": movie[1], "sizes": sizes}


@pytest.fixture
def gateway(
    s3_settings: Settings, store: dict[str, Any], tmp_path: Path
) -> Iterator[tuple[Running, Path]]:
    storage = s3_settings.storage
    assert storage.access_key_id and storage.secret_access_key and storage.endpoint_url
    credentials = Credentials(
        storage.access_key_id.get_secret_value(), storage.secret_access_key.get_secret_value()
    )
    counts = tmp_path / "counts.json"
    policy = Policy(Prefix.of(store["url"]), Prefix.of(store["workspace"]))
    running = Running(
        Gateway(policy, Upstream(storage.endpoint_url, storage.region), lambda: credentials, counts)
    )
    yield running, counts
    running.stop()


def _job_client(endpoint: str) -> Any:
    """What a job holds: a placeholder key, and the gateway as its store."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="insitu-job",
        aws_secret_access_key="no-secret-here",
        config=Config(signature_version="s3v4", retries={"max_attempts": 1}),
    )


def _counts(path: Path) -> dict[str, int]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def test_a_job_reads_its_dataset_and_writes_its_results_through_the_gateway(
    gateway: tuple[Running, Path], store: dict[str, Any]
) -> None:
    running, counts_path = gateway
    s3 = _job_client(running.endpoint)
    prefix = store["prefix"]
    meta = s3.get_object(Bucket=DATA_BUCKET, Key=f"{prefix}/movie.zarr/zarr.json")["Body"].read()
    assert json.loads(meta)["shape"] == [90, 37, 29]
    listed = s3.list_objects_v2(Bucket=DATA_BUCKET, Prefix=f"{prefix}/movie.zarr/")
    assert {o["Key"] for o in listed["Contents"]} == set(store["sizes"])
    ranged = s3.get_object(
        Bucket=DATA_BUCKET, Key=f"{prefix}/movie.zarr/zarr.json", Range="bytes=0-9"
    )
    assert ranged["Body"].read() == meta[:10]
    workspace_key = f"jobs/j-{prefix}/results/mean.json"
    s3.put_object(Bucket=RESULTS_BUCKET, Key=workspace_key, Body=b"[1, 2, 3]")
    assert s3.get_object(Bucket=RESULTS_BUCKET, Key=workspace_key)["Body"].read() == b"[1, 2, 3]"
    assert s3.get_object(Bucket=RESULTS_BUCKET, Key=f"jobs/j-{prefix}/job.json")["Body"].read()
    running.gateway.flush()
    counts = _counts(counts_path)
    assert counts["scanned"] == len(meta) + 10
    assert counts["written"] == len(b"[1, 2, 3]") and counts["refused"] == 0


def test_everything_else_is_refused_with_an_s3_error(
    gateway: tuple[Running, Path], store: dict[str, Any], s3_settings: Settings
) -> None:
    running, counts_path = gateway
    s3 = _job_client(running.endpoint)
    admin = objectstore.boto_client(s3_settings)
    other = f"{uuid.uuid4().hex[:8]}/secret.bin"
    admin.put_object(Bucket=DATA_BUCKET, Key=other, Body=b"not for this job")
    prefix = store["prefix"]
    attempts = [
        lambda: s3.get_object(Bucket=DATA_BUCKET, Key=other),
        lambda: s3.list_objects_v2(Bucket=DATA_BUCKET, Prefix=""),
        lambda: s3.list_buckets(),
        lambda: s3.put_object(Bucket=DATA_BUCKET, Key=f"{prefix}/movie.zarr/zarr.json", Body=b"x"),
        lambda: s3.put_object(Bucket=RESULTS_BUCKET, Key=f"jobs/j-{prefix}/job.json", Body=b"x"),
        lambda: s3.get_object(Bucket=RESULTS_BUCKET, Key=f"jobs/j-{prefix}/../j-x/job.json"),
        lambda: s3.copy_object(
            Bucket=RESULTS_BUCKET,
            Key=f"jobs/j-{prefix}/results/stolen.bin",
            CopySource={"Bucket": DATA_BUCKET, "Key": other},
        ),
    ]
    for attempt in attempts:
        with pytest.raises(ClientError) as refused:
            attempt()
        error = refused.value.response["Error"]
        assert error["Code"] == "AccessDenied", error
        assert "insitu's store gateway" in error["Message"]
    running.gateway.flush()
    assert _counts(counts_path)["refused"] == len(attempts)
    assert (
        admin.get_object(Bucket=RESULTS_BUCKET, Key=f"jobs/j-{prefix}/job.json")["Body"].read()
        == b"{}"
    )


def test_a_large_put_arrives_whole_and_writes_are_limited(
    gateway: tuple[Running, Path], store: dict[str, Any]
) -> None:
    running, _ = gateway
    s3 = _job_client(running.endpoint)
    key = f"jobs/j-{store['prefix']}/results/big.npy"
    body = np.random.default_rng(1).bytes(5 << 20)
    s3.put_object(Bucket=RESULTS_BUCKET, Key=key, Body=body)
    assert s3.get_object(Bucket=RESULTS_BUCKET, Key=key)["Body"].read() == body
    running.gateway.limits.max_keys = len(running.gateway.limits.keys)
    s3.put_object(Bucket=RESULTS_BUCKET, Key=key, Body=b"rewriting a key it wrote is fine")
    with pytest.raises(ClientError, match="at most"):
        s3.put_object(Bucket=RESULTS_BUCKET, Key=key + ".more", Body=b"x")
    # Outputs (insitu.Output chunks) are counted, not remembered, against their own limit.
    limits = running.gateway.limits
    limits.outputs_prefix, limits.max_output_writes = f"jobs/j-{store['prefix']}/outputs/", 2
    for chunk in ("c/0/0", "c/0/1"):
        s3.put_object(
            Bucket=RESULTS_BUCKET, Key=f"{limits.outputs_prefix}x.ome.zarr/{chunk}", Body=b"1"
        )
    with pytest.raises(ClientError, match="at most 2 objects allowed"):
        s3.put_object(
            Bucket=RESULTS_BUCKET, Key=f"{limits.outputs_prefix}x.ome.zarr/c/1/0", Body=b"1"
        )
    assert not any("outputs/" in k for k in limits.keys)
    running.gateway.limits.max_bytes = running.gateway.limits.written
    with pytest.raises(ClientError, match="bytes; at most"):
        s3.put_object(Bucket=RESULTS_BUCKET, Key=key, Body=b"one byte too many")


@pytest.mark.parametrize("reader", ["obstore", "s3fs"])
def test_the_runtime_reads_a_selection_through_the_gateway_and_it_counts_the_scan(
    gateway: tuple[Running, Path],
    store: dict[str, Any],
    reader: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running, counts_path = gateway
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "insitu-job")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "no-secret-here")
    options: dict[str, Any] = {"client_kwargs": {"endpoint_url": running.endpoint}}
    if reader == "s3fs":
        options["key"], options["secret"] = "insitu-job", "no-secret-here"
        options["use_listings_cache"] = False  # an option only s3fs honours
    from insitu.catalog import inspect_store

    info = inspect_store(store["url"], options).array(None)
    data = open_selection(store["url"], info, [(0, 90), (0, 37), (0, 29)], options, "j")
    np.testing.assert_allclose(
        data.mean(axis=0).compute(scheduler="threads"),
        store["data"].astype(np.float64).mean(axis=0),
    )
    running.gateway.flush()
    counts = _counts(counts_path)
    chunks = sum(size for key, size in store["sizes"].items() if "/c/" in key)
    assert chunks <= counts["scanned"] <= sum(store["sizes"].values()) * 2


def test_only_the_server_reads_the_counts_and_a_seal_ends_the_job_s_access(
    s3_settings: Settings, store: dict[str, Any]
) -> None:
    """Where the server cannot read the counts file (Kubernetes), it asks with its token."""
    storage = s3_settings.storage
    assert storage.access_key_id and storage.secret_access_key and storage.endpoint_url
    credentials = Credentials(
        storage.access_key_id.get_secret_value(), storage.secret_access_key.get_secret_value()
    )
    policy = Policy(Prefix.of(store["url"]), Prefix.of(store["workspace"]))
    upstream = Upstream(storage.endpoint_url, storage.region)
    token = uuid.uuid4().hex
    running = Running(Gateway(policy, upstream, lambda: credentials, admin_token=token))
    try:
        s3 = _job_client(running.endpoint)
        key = f"{store['prefix']}/movie.zarr/zarr.json"
        meta = s3.get_object(Bucket=DATA_BUCKET, Key=key)["Body"].read()
        with httpx.Client(base_url=running.endpoint) as http:
            # A job reaches the same endpoints: without the token, or with a guess, refused.
            for headers in ({}, {ADMIN_HEADER: "guess"}):
                assert http.get("/_insitu/counts", headers=headers).status_code == 403
                assert http.post("/_insitu/seal", headers=headers).status_code == 403
            counts = http.get("/_insitu/counts", headers={ADMIN_HEADER: token}).json()
            assert counts["scanned"] == len(meta)
            sealed = http.post("/_insitu/seal", headers={ADMIN_HEADER: token}).json()
            assert sealed["sealed"] and sealed["scanned"] == len(meta)
        with pytest.raises(ClientError) as refused:
            s3.get_object(Bucket=DATA_BUCKET, Key=key)
        assert refused.value.response["Error"]["Code"] == "AccessDenied"
        assert "the job is over" in refused.value.response["Error"]["Message"]
    finally:
        running.stop()
    # Without a token the endpoints do not exist for anyone.
    bare = Running(Gateway(policy, upstream, lambda: credentials))
    try:
        with httpx.Client(base_url=bare.endpoint) as http:
            assert http.get("/_insitu/counts", headers={ADMIN_HEADER: ""}).status_code == 403
    finally:
        bare.stop()


def test_without_keys_the_gateway_signs_with_credentials_botocore_refreshes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A role's credentials (here from a container-credentials endpoint on loopback, as a
    pod identity agent serves them) are fetched again before they expire: a long job is
    not cut at the end of one session."""
    import http.server
    from datetime import datetime, timedelta, timezone

    from insitu.gateway.__main__ import GatewayConfigError, signer

    served: list[str] = []

    class Credentials(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            served.append(f"ASIA{len(served) + 1:04d}")
            soon = datetime.now(timezone.utc) + timedelta(minutes=5)  # inside the refresh window
            body = json.dumps(
                {
                    "AccessKeyId": served[-1],
                    "SecretAccessKey": "secret",
                    "Token": "session",
                    "Expiration": soon.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            ).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Credentials)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                     "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN"):  # fmt: skip
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        monkeypatch.setenv(
            "AWS_CONTAINER_CREDENTIALS_FULL_URI", f"http://127.0.0.1:{server.server_port}/creds"
        )
        credentials = signer({})
        first, second = credentials(), credentials()
        assert first.access_key in served and first.token == "session"
        assert second.access_key != first.access_key  # fetched again, before expiry
        assert second.access_key == served[-1]
        # Given keys are used as they are.
        fixed = signer({"AWS_ACCESS_KEY_ID": "AKIA1", "AWS_SECRET_ACCESS_KEY": "s"})
        assert fixed().access_key == "AKIA1"
        monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        with pytest.raises(GatewayConfigError, match="no store credentials"):
            signer({})
    finally:
        server.shutdown()
