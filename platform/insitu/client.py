"""``insitu.Client``: the Python client of the REST API, which the CLI uses too."""

from __future__ import annotations

import hashlib
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from insitu import errors
from insitu.config import Settings
from insitu.runtime import bundle
from insitu.states import JobState

if TYPE_CHECKING:
    from insitu.notebook import RunResult

LONG_POLL_S = 20.0  # how long one question about a job may wait on the server for a change
_ERRORS: dict[int, type[errors.InsituError]] = {
    400: errors.InvalidInput,
    401: errors.AuthenticationFailed,
    403: errors.PermissionDenied,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.TooLarge,
    422: errors.InvalidInput,
    429: errors.LimitReached,
    503: errors.BackendError,
}


def safe_target(directory: str | Path, filename: str) -> Path:
    """Where a file the server named goes: inside ``directory``, or refused.

    The name must be one plain path component (no separators, no '..', no control
    characters); the client never trusts names sent by the server.
    """
    bad = (
        not filename
        or filename in (".", "..")
        or any(c in filename for c in "/\\:")
        or any(ord(c) < 32 for c in filename)
        or len(filename) > 255
    )
    if bad:
        raise errors.InvalidInput(
            f"the server named a result {filename[:80]!r}, which is not a plain file name; "
            "nothing was written. Tell the operator"
        )
    root = Path(directory).resolve()
    target = (root / filename).resolve()
    if target.parent != root:
        raise errors.InvalidInput(f"result {filename[:80]!r} would be written outside {root}")
    return target


class Client:
    """Talk to an insitu server.

    ``url`` and ``token`` default to ``INSITU_URL`` and ``INSITU_TOKEN``; without a
    token, the admin token of a local server (``$INSITU_HOME/admin-token``) is used.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        settings = Settings()
        self.url = (url or settings.url).rstrip("/")
        self.token = token or settings.token or self._local_admin_token(settings)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )

    @staticmethod
    def _local_admin_token(settings: Settings) -> str | None:
        try:
            return settings.admin_token_path.read_text().strip() or None
        except OSError:
            return None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text or response.reason_phrase
            if not isinstance(detail, str):
                detail = json.dumps(detail)
            error = _ERRORS.get(response.status_code, errors.InsituError)
            raise error(detail)
        return response

    def _unreachable(self, exc: httpx.TransportError) -> errors.InsituError:
        return errors.InsituError(
            f"cannot reach the insitu server at {self.url} ({exc.__class__.__name__}); "
            "start one with 'insitu server' or set INSITU_URL"
        )

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # -- server and catalog -------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The server's health, version and backend."""
        return self._json("GET", "/healthz")  # type: ignore[no-any-return]

    def register_dataset(
        self,
        name: str,
        url: str,
        description: str | None = None,
        *,
        access: str = "private",
        same_url_ok: bool = False,
    ) -> dict[str, Any]:
        """Register a Zarr store as a dataset; ``access`` is public, private, group:NAME or
        course:NAME. A URL already in the catalog is refused unless ``same_url_ok``."""
        body = {
            "name": name,
            "url": url,
            "description": description,
            "access": access,
            "same_url_ok": same_url_ok,
        }
        return self._json("POST", "/v1/datasets", json=body)  # type: ignore[no-any-return]

    def url_roots(self) -> list[dict[str, Any]]:
        """The URL roots datasets may be registered under, and for whom (admins)."""
        return self._json("GET", "/v1/url-roots")["data"]  # type: ignore[no-any-return]

    def allow_url_root(
        self, prefix: str, *, role: str | None = None, user: str | None = None
    ) -> dict[str, Any]:
        """Let a role or one user register datasets under ``prefix`` (admins)."""
        body = {"prefix": prefix, "role": role, "user": user}
        return self._json("POST", "/v1/url-roots", json=body)  # type: ignore[no-any-return]

    def remove_url_root(self, root_id: int) -> dict[str, Any]:
        """Withdraw a URL root (admins)."""
        return self._json("DELETE", f"/v1/url-roots/{root_id}")  # type: ignore[no-any-return]

    def grant(self, dataset: str, user: str) -> dict[str, Any]:
        """Let ``user`` read ``dataset`` whatever its access rule."""
        return self._json(  # type: ignore[no-any-return]
            "POST", f"/v1/datasets/{dataset}/grants", json={"user": user}
        )

    def datasets(self) -> list[dict[str, Any]]:
        """All datasets in the catalog."""
        return self._json("GET", "/v1/datasets")["data"]  # type: ignore[no-any-return]

    def dataset(self, name: str) -> dict[str, Any]:
        """One dataset with its arrays."""
        return self._json("GET", f"/v1/datasets/{name}")  # type: ignore[no-any-return]

    def lineage(self, name: str) -> list[dict[str, Any]]:
        """A dataset and its ancestors, nearest first, with what each was derived from."""
        return self._json("GET", f"/v1/datasets/{name}/lineage")["data"]  # type: ignore[no-any-return]

    def delete_dataset(self, name: str) -> dict[str, Any]:
        """Delete a derived dataset and its data."""
        return self._json("DELETE", f"/v1/datasets/{name}")  # type: ignore[no-any-return]

    def release_dataset(self, name: str) -> dict[str, Any]:
        """Let a derived dataset's own access rule alone decide who reads it."""
        return self._json("POST", f"/v1/datasets/{name}/release")  # type: ignore[no-any-return]

    def set_access(self, name: str, access: str) -> dict[str, Any]:
        """Change a dataset's access rule: public, private, group:NAME or course:NAME."""
        return self._json(  # type: ignore[no-any-return]
            "PUT", f"/v1/datasets/{name}/access", json={"access": access}
        )

    def storage(self) -> dict[str, Any]:
        """Bytes your derived datasets take, against your (and your course's) quota."""
        return self._json("GET", "/v1/users/me/storage")  # type: ignore[no-any-return]

    # -- users and audit -----------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        """The user this client's token belongs to."""
        return self._json("GET", "/v1/users/me")  # type: ignore[no-any-return]

    def add_user(
        self,
        name: str,
        role: str,
        *,
        email: str | None = None,
        groups: list[str] | None = None,
    ) -> dict[str, Any]:
        """Add a user (admins); the answer's ``token`` is shown only this once."""
        body = {"name": name, "role": role, "email": email, "groups": groups or []}
        return self._json("POST", "/v1/users", json=body)  # type: ignore[no-any-return]

    def users(self) -> list[dict[str, Any]]:
        """Every user (admins)."""
        return self._json("GET", "/v1/users")["data"]  # type: ignore[no-any-return]

    def revoke_user(self, name: str) -> dict[str, Any]:
        """Disable a user and revoke their tokens (admins)."""
        return self._json("POST", f"/v1/users/{name}/revoke")  # type: ignore[no-any-return]

    def audit(
        self,
        *,
        user: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Audit events, newest first (admins)."""
        params: dict[str, Any] = {"limit": limit}
        for key, value in (("user", user), ("action", action), ("outcome", outcome)):
            if value is not None:
                params[key] = value
        return self._json("GET", "/v1/audit", params=params)["data"]  # type: ignore[no-any-return]

    # -- jobs ---------------------------------------------------------------------------------

    # -- courses ------------------------------------------------------------------------------

    def create_course(
        self,
        name: str,
        participants: list[dict[str, Any]],
        *,
        datasets: list[str] | None = None,
        quota: str | dict[str, Any] | None = None,
        expires: str | None = None,
    ) -> dict[str, Any]:
        """Create a course; the answer holds each participant's token, shown only this once."""
        body = {
            "name": name,
            "participants": participants,
            "datasets": datasets or [],
            "quota": quota,
            "expires": expires,
        }
        return dict(self._json("POST", "/v1/courses", json=body))

    def add_participants(self, name: str, participants: list[dict[str, Any]]) -> dict[str, Any]:
        """Add participants to a course; the answer holds their tokens."""
        path = f"/v1/courses/{name}/participants"
        return dict(self._json("POST", path, json={"participants": participants}))

    def courses(self) -> list[dict[str, Any]]:
        """The courses you manage."""
        return list(self._json("GET", "/v1/courses")["data"])

    def course_report(self, name: str) -> dict[str, Any]:
        """Per participant: jobs, failures, core-hours, bytes scanned and returned."""
        return dict(self._json("GET", f"/v1/courses/{name}/report"))

    def close_course(self, name: str) -> dict[str, Any]:
        """Revoke every participant's tokens and cancel their unfinished jobs."""
        return dict(self._json("POST", f"/v1/courses/{name}/close"))

    def upload_code(self, directory: str | Path) -> str:
        """Pack and upload a directory of code; return the bundle id."""
        data = bundle.pack(Path(directory))
        response = self._json(
            "POST", "/v1/bundles", content=data, headers={"Content-Type": "application/gzip"}
        )
        return str(response["digest"])

    def submit(
        self,
        spec: dict[str, Any] | str | Path,
        *,
        code: str | Path | None = None,
        bundle: str | None = None,
    ) -> dict[str, Any]:
        """Submit a job spec (a dict, YAML/JSON text, or a file path) with optional code.

        ``code`` is a folder to pack and upload; ``bundle`` the id of a bundle uploaded
        before with :meth:`upload_code`, to share one upload between several jobs.
        """
        return self._json(  # type: ignore[no-any-return]
            "POST", "/v1/jobs", json=self._spec_body(spec, code, bundle)
        )

    def submit_pipeline(
        self,
        pipeline: dict[str, Any] | str | Path,
        *,
        code: str | Path | None = None,
        bundle: str | None = None,
    ) -> list[dict[str, Any]]:
        """Submit every step of a pipeline (a dict, YAML text or a file path), one code
        bundle for all; the jobs, in order. A step reading an earlier one's output
        (``dataset: step:<name>/<output>``) waits until that output exists."""
        body = self._spec_body(pipeline, code, bundle)
        body = {"pipeline": body.pop("spec"), **body}
        return self._json("POST", "/v1/pipelines", json=body)["data"]  # type: ignore[no-any-return]

    def plan(
        self,
        spec: dict[str, Any] | str | Path,
        *,
        code: str | Path | None = None,
        bundle: str | None = None,
    ) -> dict[str, Any]:
        """What a job spec would read, its estimated run time and core-hours, and whether
        your quota lets it start; checked as :meth:`submit` checks it, and not queued."""
        return self._json(  # type: ignore[no-any-return]
            "POST", "/v1/plans", json=self._spec_body(spec, code, bundle)
        )

    def _spec_body(
        self, spec: dict[str, Any] | str | Path, code: str | Path | None, bundle: str | None
    ) -> dict[str, Any]:
        """The body of a submit or a plan: the spec (a file read here) and its code."""
        if code is not None and bundle is not None:
            raise errors.InvalidInput("give either a code folder or a bundle id, not both")
        if isinstance(spec, Path) or (
            isinstance(spec, str) and "\n" not in spec and spec.endswith((".yaml", ".yml", ".json"))
        ):
            path = Path(spec)
            try:
                spec = path.read_text()
            except OSError as exc:
                raise errors.InvalidInput(f"cannot read job spec {path}: {exc.strerror}") from None
        bundle_id = self.upload_code(code) if code is not None else bundle
        return {"spec": spec, "code_bundle": bundle_id}

    def job(self, job_id: str) -> dict[str, Any]:
        """A job's current record."""
        return self._json("GET", f"/v1/jobs/{job_id}")  # type: ignore[no-any-return]

    def jobs(
        self, *, states: list[str] | None = None, limit: int = 100, all_users: bool = False
    ) -> list[dict[str, Any]]:
        """Your jobs, newest first."""
        params: dict[str, Any] = {"limit": limit, "all_users": all_users}
        if states:
            params["state"] = states
        return self._json("GET", "/v1/jobs", params=params)["data"]  # type: ignore[no-any-return]

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job."""
        return self._json("POST", f"/v1/jobs/{job_id}/cancel")  # type: ignore[no-any-return]

    def events(self, job_id: str) -> list[dict[str, Any]]:
        """A job's state transitions."""
        return self._json("GET", f"/v1/jobs/{job_id}/events")["data"]  # type: ignore[no-any-return]

    def logs(self, job_id: str, offset: int = 0) -> dict[str, Any]:
        """A chunk of a job's log from ``offset``."""
        return self._json("GET", f"/v1/jobs/{job_id}/logs", params={"offset": offset})  # type: ignore[no-any-return]

    def log_text(self, job_id: str) -> str:
        """All of a job's log written so far."""
        parts: list[str] = []
        offset = 0
        while True:
            chunk = self.logs(job_id, offset)
            if not chunk["text"] or chunk["next_offset"] == offset:
                return "".join(parts)
            parts.append(chunk["text"])
            offset = chunk["next_offset"]

    def follow_logs(self, job_id: str, poll: float = 0.5) -> Iterator[str]:
        """Yield a job's log text as it is written, until the job ends."""
        offset = 0
        while True:
            chunk = self.logs(job_id, offset)
            if chunk["text"]:
                yield chunk["text"]
            offset = chunk["next_offset"]
            if chunk["complete"]:
                return
            if not chunk["text"]:
                time.sleep(poll)

    def job_change(
        self, job_id: str, etag: str | None, *, wait: float = LONG_POLL_S
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The job's record once it differs from the version ``etag`` names, waiting on the
        server up to ``wait`` seconds (a long poll); ``None`` for a job still unchanged.
        Returns the record and the ``ETag`` of its version (``None`` from a server that
        names none: ask again after a pause)."""
        headers = {"If-None-Match": etag} if etag else {}
        params = {"wait": wait} if etag and wait > 0 else {}
        response = self._request(
            "GET",
            f"/v1/jobs/{job_id}",
            params=params,
            headers=headers,
            timeout=self._http.timeout.read + wait if self._http.timeout.read else None,
        )
        version = response.headers.get("ETag")
        if response.status_code == 304:
            return None, version
        return response.json(), version

    def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        poll: float = 0.25,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Wait for a job to end; ``on_update`` sees every version of its record on the way.

        The server answers when the job changes (a long poll); ``poll`` is the pause between
        questions to a server that cannot wait."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job: dict[str, Any] | None = None
        etag: str | None = None
        while True:
            left = LONG_POLL_S if deadline is None else deadline - time.monotonic()
            changed, etag = self.job_change(job_id, etag, wait=max(0.0, min(LONG_POLL_S, left)))
            if changed is not None:
                job = changed
                if on_update is not None:
                    on_update(job)
                if JobState(job["state"]).terminal:
                    return job
            if deadline is not None and time.monotonic() > deadline:
                state = job["state"] if job else "unknown"
                raise TimeoutError(f"job {job_id} is still {state} after {timeout} s")
            if etag is None:
                time.sleep(poll)

    def run(
        self,
        function: Callable[..., Any],
        dataset: str,
        *,
        select: dict[str, Any] | None = None,
        array: str | None = None,
        params: dict[str, Any] | None = None,
        workers: int = 1,
        threads_per_worker: int | None = None,
        memory_per_worker: str | int | None = None,
        image: str | None = None,
        timeout: float | None = None,
        progress: bool = True,
    ) -> RunResult:
        """Run ``function(data, *, context, **params)`` on ``dataset`` next to the data, and
        return its results as Python values (NumPy arrays, DataFrames, JSON values, PNG
        bytes), shown with pictures in Jupyter.

        The function is sent with its code (:func:`insitu.notebook.package`): its module's
        file, or, defined in a notebook, its source, the notebook functions it calls and the
        modules it imports; anything else is refused, saying what to pass in ``params``.
        Shows the job's progress (live in Jupyter); raises :class:`AnalysisFailed` with the
        job's error unless it succeeds.
        """
        import tempfile

        from insitu.notebook import RunResult, package

        resources: dict[str, Any] = {"workers": workers}
        if threads_per_worker is not None:
            resources["threads_per_worker"] = threads_per_worker
        if memory_per_worker is not None:
            resources["memory_per_worker"] = memory_per_worker
        with tempfile.TemporaryDirectory(prefix="insitu-run-") as folder:
            entrypoint = package(function, Path(folder))
            analysis: dict[str, Any] = {"entrypoint": entrypoint, "params": params or {}}
            if image is not None:
                analysis["image"] = image
            name = re.sub(r"[^a-z0-9._-]+", "-", function.__name__.lower()).strip("-._")
            spec: dict[str, Any] = {"dataset": dataset, "analysis": analysis,
                                    "resources": resources, "name": name[:63] or "run"}  # fmt: skip
            if select is not None:
                spec["select"] = select
            if array is not None:
                spec["array"] = array
            job = self.submit(spec, code=folder)
        job = self._follow(job, timeout=timeout, progress=progress)
        if job["state"] != JobState.SUCCEEDED.value:
            raise errors.AnalysisFailed(
                f"job {job['id']} {job['state']}: {job.get('error') or job.get('reason')}"
            )
        values = {r["key"]: self.result(job["id"], r["key"]) for r in job["results"]}
        return RunResult(job, values)

    def _follow(
        self, job: dict[str, Any], *, timeout: float | None, progress: bool
    ) -> dict[str, Any]:
        """Wait for ``job`` to end, showing its progress: HTML in Jupyter, else a bar."""
        from insitu.notebook import in_jupyter, progress_html

        if not progress:
            return self.wait(job["id"], timeout=timeout)
        if in_jupyter():
            from IPython.display import HTML, display

            shown = display(HTML(progress_html(job)), display_id=True)
            return self.wait(
                job["id"], timeout=timeout, on_update=lambda j: shown.update(HTML(progress_html(j)))
            )
        from insitu.cli import output

        return output.watch(self, [job["id"]])[0]

    def results(self, job_id: str) -> list[dict[str, Any]]:
        """The result files of a succeeded job."""
        return self._json("GET", f"/v1/jobs/{job_id}/results")["data"]  # type: ignore[no-any-return]

    def download(
        self, job_id: str, filename: str, directory: str | Path, sha256: str | None = None
    ) -> Path:
        """Stream one result file into ``directory``; never write outside it.

        ``filename`` comes from the server, so only a plain file name is accepted; with
        ``sha256`` the bytes are checked and a file that does not match is removed.
        """
        target = safe_target(directory, filename)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.part")  # the file appears only when whole
        digest = hashlib.sha256()
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/results/{filename}") as response:
                if response.status_code >= 400:
                    response.read()
                    self._raise_for(response)
                with open(partial, "wb") as out:
                    for block in response.iter_bytes():
                        digest.update(block)
                        out.write(block)
        except httpx.TransportError as exc:
            partial.unlink(missing_ok=True)
            raise self._unreachable(exc) from None
        if sha256 is not None and digest.hexdigest() != sha256:
            partial.unlink(missing_ok=True)
            raise errors.InsituError(
                f"{filename} of job {job_id} arrived with other bytes than the server recorded "
                "(its SHA-256 differs); it was not kept. Download it again, and tell the operator "
                "if this repeats"
            )
        partial.replace(target)
        return target

    def _raise_for(self, response: httpx.Response) -> None:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise _ERRORS.get(response.status_code, errors.InsituError)(str(detail))

    def download_all(self, job_id: str, directory: str | Path) -> list[Path]:
        """Download every result and the provenance of a job."""
        paths = [
            self.download(job_id, r["filename"], directory, r.get("sha256"))
            for r in self.results(job_id)
        ]
        return [*paths, self.download(job_id, "provenance.json", directory)]

    def provenance(self, job_id: str) -> dict[str, Any]:
        """The provenance record of a succeeded job: spec, versions, timings, bytes."""
        return self._json("GET", f"/v1/jobs/{job_id}/results/provenance.json")  # type: ignore[no-any-return]

    def result(self, job_id: str, key: str) -> Any:
        """Load one result into memory: an ndarray, a DataFrame, a JSON value or PNG bytes."""
        records = {r["key"]: r for r in self.results(job_id)}
        if key not in records:
            raise errors.NotFound(
                f"job {job_id} has no result {key!r}; it has {', '.join(records)}"
            )
        record = records[key]
        data = self._request("GET", f"/v1/jobs/{job_id}/results/{record['filename']}").content
        if record["kind"] == "array":
            import numpy as np

            return np.load(io.BytesIO(data), allow_pickle=False)
        if record["kind"] == "table":
            import pandas as pd

            return pd.read_parquet(io.BytesIO(data))
        if record["kind"] == "json":
            return json.loads(data)
        return data
