"""Before and after a platform fix: the same job through two versions of insitu, interleaved.

The older version is checked out from git into ``.bench/`` (a detached worktree) and put
first on ``PYTHONPATH``; each version runs its own server in a child process on the same
SeaweedFS and dataset, alternating, and times submit-to-result of the same job.

    .venv/bin/python tests/benchmarks/bench_before_after.py --before REV --record
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import common
from common import Movie

BENCHMARK = "before_after"
CHILD = """
import json, sys, time
from datetime import datetime
from insitu.client import Client
from insitu.config import Settings
from insitu.server import background_server

runs, out = int(sys.argv[1]), []
settings = Settings()
with background_server(settings) as server:
    client = Client(server.url, settings.admin_token_path.read_text().strip(), timeout=600)
    if not client.datasets():
        client.register_dataset("bench/movie", sys.argv[2], access="public")
    bundle = client.upload_code(sys.argv[3])
    spec = {"dataset": "bench/movie",
            "analysis": {"entrypoint": "ophys_analyses.projection:mean_projection"},
            "resources": {"workers": 2, "threads_per_worker": 1}}
    for _ in range(runs):
        started = time.perf_counter()
        job = client.submit(spec, bundle=bundle)
        done = client.wait(job["id"], poll=0.05)
        assert done["state"] == "succeeded", done["error"]
        client.result(job["id"], "mean")
        seconds = time.perf_counter() - started
        at = {e["to_state"]: datetime.fromisoformat(e["at"]) for e in client.events(job["id"])}
        # Client.provenance is newer than some versions measured here: plain HTTP instead.
        provenance = client._http.get(f"/v1/jobs/{job['id']}/results/provenance.json")
        record = provenance.json()
        # Newer versions keep the runner's own timings apart from the server's.
        timings = record.get("reported_by_job", record)["timings"]
        out.append({"seconds": seconds,
                    "running_to_succeeded_s": (at["succeeded"] - at["running"]).total_seconds(),
                    "compute_s": timings["compute_s"]})
print(json.dumps(out))
"""


def worktree(revision: str, cache: Path) -> Path:
    """A detached checkout of ``revision`` under ``cache`` (made once)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", revision],
        cwd=common.ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    path = cache / f"insitu-{commit}"
    if not path.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), commit],
            cwd=common.ROOT,
            check=True,
            capture_output=True,
        )
    return path


def child_env(settings: Any, home: Path, source: Path) -> dict[str, str]:
    """A child's environment: its own home, the shared store, one insitu version."""
    storage = settings.storage
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("INSITU_", "AWS_", "PYTHONPATH"))
    }
    secrets = ("access_key_id", "secret_access_key", "job_access_key_id", "job_secret_access_key")
    for name in secrets:
        env[f"INSITU_STORAGE__{name.upper()}"] = getattr(storage, name).get_secret_value()
    env |= {
        "INSITU_STORAGE__ENDPOINT_URL": storage.endpoint_url,
        "INSITU_WORKSPACE_URL": str(settings.workspace_url),
        "INSITU_HOME": str(home),
        "INSITU_SERVER__PORT": "0",
        "PYTHONPATH": str(source / "platform"),
    }
    return env


def run(
    home: Path, before: str, movie: Movie, rounds: int, per_round: int, cache: Path
) -> dict[str, Any]:
    """Alternate the two versions ``rounds`` times, ``per_round`` jobs each (first discarded)."""
    old = worktree(before, cache)
    local = common.cached(
        cache / f"movie-{movie.frames}x{movie.size}.zarr",
        movie,
        lambda p: common.write_movie(p, movie),
    )
    versions = {"before": old, "after": common.ROOT}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in versions}
    with common.s3_stack(home / "s3") as (_, settings):
        url = common.data_url("movie.zarr")
        common.upload(local, url, settings)
        for round_ in range(rounds):
            order = list(versions) if round_ % 2 == 0 else list(versions)[::-1]
            for name in order:
                env = child_env(settings, home / name, versions[name])
                code = str(common.ROOT / "examples" / "ophys")
                output = subprocess.run(
                    [sys.executable, "-c", CHILD, str(per_round + 1), url, code],
                    env=env,
                    capture_output=True,
                    text=True,
                )
                if output.returncode != 0:
                    raise RuntimeError(f"the {name} version failed:\n{output.stderr[-3000:]}")
                runs[name] += json.loads(output.stdout.strip().splitlines()[-1])[1:]
    figures: dict[str, Any] = {
        name: {
            key: round(common.median([r[key] for r in results]), 3)
            for key in ("seconds", "running_to_succeeded_s", "compute_s")
        }
        for name, results in runs.items()
    }
    figures["after_over_before"] = round(
        figures["after"]["seconds"] / figures["before"]["seconds"], 3
    )
    return {
        "title": "Before and after: a job ends when its outcome is written",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "before": before,
        "data": {"shape": list(movie.shape), "chunks": list(movie.chunks), "dtype": "uint16"},
        "method": (
            f"{rounds} alternating rounds of {per_round} mean-projection jobs (2 workers) per "
            "version, each version its own server process on one SeaweedFS; medians"
        ),
        "runs": {name: [round(r["seconds"], 3) for r in results] for name, results in runs.items()},
        "figures": figures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the older version")
    parser.add_argument("--frames", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=2)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    with common.scratch() as home:
        movie = Movie(frames=args.frames)
        result = run(home, args.before, movie, args.rounds, args.per_round, common.CACHE)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    common.publish(BENCHMARK, result, args.record)
    return 0


def report(result: dict[str, Any]) -> str:
    """The Markdown section of ``docs/benchmarks.md``."""
    f = result["figures"]
    return "\n".join(
        [
            "## Profile and fix: a job ends when its outcome is written",
            "",
            f"Method: {result['method']}. Before = insitu at `{result['before']}`; after = "
            "this checkout.",
            "",
            "| version | submit to result, s | running to succeeded, s | job compute, s |",
            "|---|---:|---:|---:|",
            *(
                f"| {name} | {f[name]['seconds']} | {f[name]['running_to_succeeded_s']} | "
                f"{f[name]['compute_s']} |"
                for name in ("before", "after")
            ),
            "",
            f"After / before, submit to result: **{f['after_over_before']}x**.",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
