"""The web UI's pages on a course's database: how long each page takes to render.

One ``insitu server`` in its own process (the noop backend: the API's own costs, no jobs'
compute), on SQLite and on PostgreSQL, filled as the course-load benchmark fills it: a
course of 60 participants who each submitted 10 jobs through the API. Then, interleaved,
``--repeats`` rounds of every page as a participant, an instructor and an admin see it,
each round also timing the JSON API's job list (``GET /v1/jobs``) as the baseline the
pages are compared with. Goal (issue 16): every page under 200 ms.

    .venv/bin/python tests/benchmarks/bench_web.py [--participants 60 --jobs 10] [--record]
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import common
import httpx
from bench_course_load import database, percentile, server_process, small_movie

from insitu.client import Client

BENCHMARK = "web_pages"
PAGE_MS = 200.0  # the goal for a page on the load test's database
DATASET = "course/movie"


def fill(url: str, admin_token: str, movie: Path, participants: int, jobs: int) -> dict[str, Any]:
    """A course whose participants each submit ``jobs`` jobs (the noop backend ends them)."""
    with Client(url, admin_token) as admin:
        admin.register_dataset(DATASET, str(movie))
        roster = [{"name": f"P{i:02d}", "email": f"p{i}@x.example"} for i in range(participants)]
        created = admin.create_course(
            "web-course", roster, datasets=[DATASET], quota="jobs=2,workers=2"
        )
        tokens = [p["token"] for p in created["created"]]

    def submit_all(token: str) -> list[str]:
        with Client(url, token) as person:
            spec = {"dataset": DATASET, "analysis": {"entrypoint": "m:f"}}
            ids = [person.submit(spec)["id"] for _ in range(jobs)]
            for job_id in ids:
                person.wait(job_id, timeout=300)
            return ids

    with ThreadPoolExecutor(8) as pool:
        submitted = list(pool.map(submit_all, tokens))
    return {"participant": tokens[0], "admin": admin_token,
            "job": submitted[0][-1], "jobs": sum(map(len, submitted))}  # fmt: skip


def pages(filled: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Each page, as the user who sees it: (token, path)."""
    participant, job = filled["participant"], filled["job"]
    return {
        "jobs (a participant's)": (participant, "/ui/jobs"),
        "a job": (participant, f"/ui/jobs/{job}"),
        "a job's live status": (participant, f"/ui/jobs/{job}?part=status"),
        "plan (the form)": (participant, "/ui/plan"),
        "datasets": (participant, "/ui/datasets"),
        "a dataset": (participant, f"/ui/datasets/{DATASET}"),
        "courses (its instructor's)": (filled["admin"], "/ui/courses"),
        "audit (an admin's)": (filled["admin"], "/ui/audit"),
        "jobs (the JSON API; baseline)": (participant, "/v1/jobs?limit=100"),
    }


def measure(url: str, filled: dict[str, Any], repeats: int) -> dict[str, dict[str, float]]:
    """Every page ``repeats`` times, interleaved: p50 and p95 in ms."""
    times: dict[str, list[float]] = {name: [] for name in pages(filled)}
    clients = {
        token: httpx.Client(base_url=url, cookies={"insitu_token": token}, timeout=30)
        for token in {t for t, _ in pages(filled).values()}
    }
    try:
        for name, (token, path) in pages(filled).items():  # a warm-up round
            answer = clients[token].get(path)
            if answer.status_code != 200:
                raise RuntimeError(f"{name}: {answer.status_code} {answer.text[:300]}")
        for _ in range(repeats):
            for name, (token, path) in pages(filled).items():
                began = time.perf_counter()
                clients[token].get(path).raise_for_status()
                times[name].append((time.perf_counter() - began) * 1000)
    finally:
        for client in clients.values():
            client.close()
    return {
        name: {"p50_ms": round(percentile(t, 50), 1), "p95_ms": round(percentile(t, 95), 1)}
        for name, t in times.items()
    }


def run(home: Path, participants: int, jobs: int, repeats: int, kinds: list[str]) -> dict[str, Any]:
    movie = small_movie(home / "movie.zarr")
    by_database: dict[str, Any] = {}
    for kind in kinds:
        run_home = home / kind
        run_home.mkdir(parents=True, exist_ok=True)
        with (
            database(kind, run_home) as url_of_db,
            server_process(run_home, url_of_db, slots=8, extra={"INSITU_BACKEND": "noop"}) as (
                url,
                _,
            ),
        ):
            token = (run_home / "admin-token").read_text().strip()
            filled = fill(url, token, movie, participants, jobs)
            by_database[kind] = {"jobs": filled["jobs"], "pages": measure(url, filled, repeats)}
    return {
        "title": "The web UI's pages on a course's database",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": common.machine(),
        "participants": participants,
        "jobs_per_participant": jobs,
        "repeats": repeats,
        "databases": by_database,
        "goals": goals(by_database),
    }


def goals(by_database: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for kind, figures in by_database.items():
        worst_name, worst = max(
            ((n, f["p95_ms"]) for n, f in figures["pages"].items() if "baseline" not in n),
            key=lambda item: item[1],
        )
        found.append({
            "goal": f"every web page under 200 ms ({kind}, {figures['jobs']} jobs; slowest p95: "
                    f"{worst_name})",
            "target": f"< {PAGE_MS:.0f} ms",
            "measured": f"{worst} ms",
            "met": worst < PAGE_MS,
        })  # fmt: skip
    return found


def report(result: dict[str, Any]) -> str:
    """The markdown section of docs/benchmarks.md."""
    kinds = list(result["databases"])
    lines = [
        f"## {result['title']}",
        "",
        f"`tests/benchmarks/bench_web.py`, {result['date']}: an `insitu server` process (noop "
        f"backend) whose course of {result['participants']} participants each submitted "
        f"{result['jobs_per_participant']} jobs; {result['repeats']} interleaved rounds of "
        "every page, one request at a time, with the JSON API's job list as the baseline.",
        "",
        "| page | " + " | ".join(f"{k} p50 / p95 ms | {k} / baseline" for k in kinds) + " |",
        "|---|" + "---:|---:|" * len(kinds),
    ]
    base = {k: result["databases"][k]["pages"]["jobs (the JSON API; baseline)"]["p50_ms"]
            for k in kinds}  # fmt: skip
    for name in result["databases"][kinds[0]]["pages"]:
        cells = []
        for kind in kinds:
            page = result["databases"][kind]["pages"][name]
            ratio = page["p50_ms"] / base[kind] if base[kind] else float("nan")
            cells.append(f"{page['p50_ms']} / {page['p95_ms']} | {ratio:.2f}x")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", *common.goals_markdown(result["goals"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--database", action="append", choices=["sqlite", "postgres"])
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.json")
    args = parser.parse_args(argv)
    with common.scratch() as home:
        result = run(home, args.participants, args.jobs, args.repeats,
                     args.database or ["sqlite", "postgres"])  # fmt: skip
    print(report(result))
    common.publish(BENCHMARK, result, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
