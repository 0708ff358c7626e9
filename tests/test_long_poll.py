"""Long polls on a job: the server answers when the job changes, not a client's loop."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from insitu.api.changes import JobChanges
from insitu.client import Client
from insitu.config import Settings
from insitu.server import BackgroundServer

pytestmark = pytest.mark.timeout(90)
DATASET = "lab/movie-01"


def job_spec() -> dict[str, Any]:
    return {"dataset": DATASET, "analysis": {"entrypoint": "my_analysis:time_mean"}}


def test_a_waiting_request_is_woken_by_a_change_from_another_thread() -> None:
    async def scenario() -> tuple[bool, bool, bool]:
        changes = JobChanges()
        changes.bind(asyncio.get_running_loop())
        quiet = await changes.wait("j-1", 0.05)  # nothing changes: it times out
        timer = threading.Timer(0.1, changes.changed, args=("j-1",))
        timer.start()
        woken = await changes.wait("j-1", 30)
        other = await changes.wait("j-2", 0.05)  # a change of j-1 does not wake j-2
        return quiet, woken, other

    assert asyncio.run(scenario()) == (False, True, False)


def test_a_long_poll_answers_each_change_of_a_running_job(
    client: Client, settings: Settings, movie: tuple[Path, np.ndarray], analysis_code: Path
) -> None:
    """Every answer is a new version: the client never asks twice for the same record."""
    client.register_dataset(DATASET, str(movie[0]))
    job = client.submit(job_spec(), code=analysis_code)
    answers: list[int] = []
    client._http.event_hooks["response"].append(lambda r: answers.append(r.status_code))
    versions: list[str] = []
    done = client.wait(job["id"], timeout=60, on_update=lambda j: versions.append(json.dumps(j)))
    assert done["state"] == "succeeded", done["error"]
    assert answers and set(answers) == {200}  # no 304: every question got a change
    assert len(versions) == len(set(versions)) == len(answers)
    states = [json.loads(v)["state"] for v in versions]
    assert states[-1] == "succeeded" and states[0] in ("queued", "admitted", "provisioning")


def test_an_unchanged_job_answers_304_and_a_cancel_wakes_a_waiting_request(
    settings: Settings, movie: tuple[Path, np.ndarray]
) -> None:
    server = BackgroundServer(settings, run_dispatcher=False).start()  # nothing will run it
    token = settings.admin_token_path.read_text().strip()
    try:
        with (
            Client(server.url, token) as api,
            httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as http,
        ):
            api.register_dataset(DATASET, str(movie[0]))
            job_id = api.submit(job_spec())["id"]
            first = http.get(f"/v1/jobs/{job_id}")
            etag = first.headers["ETag"]
            assert first.status_code == 200 and first.json()["state"] == "queued"

            conditional = {"If-None-Match": etag}
            assert http.get(f"/v1/jobs/{job_id}", headers=conditional).status_code == 304
            waited = http.get(f"/v1/jobs/{job_id}", headers=conditional, params={"wait": 0.3})
            assert waited.status_code == 304 and waited.headers["ETag"] == etag
            stale = http.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": '"other"'})
            assert stale.status_code == 200 and stale.headers["ETag"] == etag

            # Another participant learns nothing of the job, waiting or not, whatever it sends.
            other = api.add_user("mallory", "participant")["token"]
            for guess in (etag, "*"):
                peek = httpx.get(
                    f"{server.url}/v1/jobs/{job_id}",
                    headers={"Authorization": f"Bearer {other}", "If-None-Match": guess},
                    params={"wait": 30},
                    timeout=5,  # refused at once (403, as any read of it): never a wait or a 304
                )
                assert peek.status_code == 403 and "ETag" not in peek.headers

            too_long = http.get(f"/v1/jobs/{job_id}", headers=conditional, params={"wait": 600})
            assert too_long.status_code == 422 and "wait" in too_long.text

            answer: list[httpx.Response] = []
            poll = threading.Thread(
                target=lambda: answer.append(
                    http.get(f"/v1/jobs/{job_id}", headers=conditional, params={"wait": 30})
                )
            )
            poll.start()
            api.cancel(job_id)  # no dispatcher here: the waiting request looks again itself
            poll.join(40)
            assert answer and answer[0].status_code == 200
            assert answer[0].json()["state"] == "cancelled"
            assert answer[0].headers["ETag"] != etag
            # A job that has ended will not change: a long poll on it answers at once.
            ended = {"If-None-Match": answer[0].headers["ETag"]}
            final = http.get(f"/v1/jobs/{job_id}", headers=ended, params={"wait": 30}, timeout=5)
            assert final.status_code == 304
    finally:
        server.stop()
