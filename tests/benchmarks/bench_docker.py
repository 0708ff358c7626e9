"""Docker backend: how long an analysis image takes to build, and a job to start.

- Image build: the ophys example's image on the Debian base (``examples/base-image``),
  once with no layer cache (every pip download and install) and once again unchanged.
- Job start-up: the same small mean projection on the local and the docker backend, on
  one SeaweedFS, runs interleaved; from the job's own events, submit to running and
  submit to succeeded. The local backend is the baseline measured in the same run.

Needs root, debootstrap and a running Docker engine. ``--record`` writes the figures to
``docs/benchmarks.json`` (key ``docker_backend``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import common
from common import Movie, machine, write_movie

from insitu import images, objectstore
from insitu.client import Client
from insitu.config import Settings
from insitu.server import BackgroundServer
from insitu.storage import obstore_config, open_object_store

BENCHMARK = "docker_backend"
ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "insitu-base:bookworm"
IMAGE = "insitu-ophys:bench"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BACKENDS = ("local", "docker")


def build_image(client: Any, nocache: bool) -> float:
    """Seconds to build the ophys example's image."""
    subprocess.run(["bash", str(ROOT / "examples/base-image/debian.sh"), BASE_IMAGE], check=True)
    built = images.build(
        client,
        ROOT / "examples" / "ophys",
        IMAGE,
        build_args={"BASE_IMAGE": BASE_IMAGE},
        ca_bundle=HOST_CA if HOST_CA.is_file() else None,
        nocache=nocache,
    )
    return built.seconds


def _seconds_between(events: list[dict[str, Any]], start: str, end: str) -> float:
    """Seconds from the event entering `start` to the one entering `end`.

    A short job can finish between two of the server's polls, so it goes from
    provisioning straight to its end: then the first event after `start` is
    when the server knew it had been running (an upper bound).
    """
    at = [(e["to_state"], datetime.fromisoformat(e["at"].replace("Z", "+00:00"))) for e in events]
    began = next(t for state, t in at if state == start)
    reached = next((t for state, t in at if state == end), None)
    if reached is None:
        reached = next(t for _, t in at if t > began)
    return (reached - began).total_seconds()


def one_job(api: Client, workers: int) -> dict[str, float]:
    """Submit the mean projection, wait for it; its phases from its events."""
    spec = {
        "dataset": "bench/movie",
        "analysis": {"image": IMAGE, "entrypoint": "ophys_analyses.projection:mean_projection"},
        "resources": {"workers": workers, "threads_per_worker": 1, "memory_per_worker": "1GiB"},
    }
    seconds, done = common.timed(lambda: api.wait(api.submit(spec)["id"], timeout=300))
    if done["state"] != "succeeded":
        raise RuntimeError(f"benchmark job {done['id']} {done['state']}: {done['error']}")
    events = api.events(done["id"])
    return {
        "submit_to_running_s": _seconds_between(events, "queued", "running"),
        "provisioning_to_running_s": _seconds_between(events, "provisioning", "running"),
        "submit_to_succeeded_s": _seconds_between(events, "queued", "succeeded"),
        "client_wall_s": seconds,
    }


def run(
    home: Path, movie: Movie, repeats: int, workers: int = 2, cold_build: bool = True
) -> dict[str, Any]:
    """Build times, then interleaved jobs on both backends."""
    client = images.docker_client()
    cold = build_image(client, nocache=True) if cold_build else float("nan")
    warm = build_image(client, nocache=False)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "examples" / "ophys"), os.environ.get("PYTHONPATH", "")]
    )
    runs: dict[str, list[dict[str, float]]] = {b: [] for b in BACKENDS}
    with common.s3_stack(home / "store") as (_, settings):
        url = common.data_url("docker-movie.zarr")
        options = objectstore.platform_options(settings, url)
        write_movie(open_object_store(url, obstore_config(options) or {}, read_only=False), movie)
        servers, apis = [], {}
        try:
            for backend in BACKENDS:
                configured: Settings = settings.model_copy(
                    update={"home": home / backend, "backend": backend}
                )
                server = BackgroundServer(configured).start()
                servers.append(server)
                token = configured.admin_token_path.read_text().strip()
                apis[backend] = Client(server.url, token)
                apis[backend].register_dataset("bench/movie", url)
            contenders = {
                b: (lambda b=b: runs[b].append(one_job(apis[b], workers)) or 0.0) for b in BACKENDS
            }
            common.interleaved(contenders, repeats)
        finally:
            for api in apis.values():
                api.close()
            for server in servers:
                server.stop()
    # interleaved() ran one warm-up per contender first: drop it.
    runs = {b: r[1:] for b, r in runs.items()}
    medians = {
        b: {k: round(common.median([r[k] for r in runs[b]]), 2) for k in runs[b][0]}
        for b in BACKENDS
    }
    return {
        "title": "Docker backend: image build and job start-up",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "data": {**asdict(movie), "shape": list(movie.shape), "raw_bytes": movie.raw_bytes},
        "method": (
            f"{repeats} interleaved jobs per backend after one warm-up each, medians; a mean "
            f"projection with {workers} workers x 1 thread on SeaweedFS at 127.0.0.1; phases "
            "from the job's persisted events; image builds of examples/ophys on the Debian "
            "base, with no layer cache and then unchanged"
        ),
        "repeats": repeats,
        "figures": {
            "image_build_cold_s": round(cold, 1),
            "image_build_unchanged_s": round(warm, 1),
            "jobs": medians,
            "runs": runs,
            "docker_over_local": {
                k: round(medians["docker"][k] / medians["local"][k], 2)
                for k in ("submit_to_running_s", "submit_to_succeeded_s")
            },
        },
        "goals": [],
    }


def report(result: dict[str, Any]) -> str:
    """The Markdown section of ``docs/benchmarks.md``."""
    f = result["figures"]
    jobs, ratio = f["jobs"], f["docker_over_local"]
    rows = [
        f"| {label} | {jobs['local'][key]} s | {jobs['docker'][key]} s | "
        f"{ratio.get(key, round(jobs['docker'][key] / jobs['local'][key], 2))}x |"
        for key, label in (
            ("submit_to_running_s", "submit to running"),
            ("provisioning_to_running_s", "provisioning to running (cluster up)"),
            ("submit_to_succeeded_s", "submit to succeeded"),
            ("client_wall_s", "client: submit to result known"),
        )
    ]
    return "\n".join(
        [
            "## Docker backend: image build and job start-up",
            "",
            f"Method: {result['method']}.",
            "",
            f"- Building the ophys example's analysis image: **{f['image_build_cold_s']} s** "
            "with no layer cache (pip downloads and installs insitu's runtime pinned to the "
            f"server's versions, then the analysis); **{f['image_build_unchanged_s']} s** "
            "rebuilt unchanged.",
            "",
            "| job phase (median) | local backend | docker backend | docker / local |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            "A docker job starts a gateway, a scheduler, one container per worker and a "
            "runner, and checks its image once per image id; the local backend starts one "
            "process that starts its own LocalCluster. Reads on the docker backend pass two "
            "relays (the job's gateway and the server's store relay).",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="jobs per backend (default 5)")
    parser.add_argument("--frames", type=int, default=512, help="T of the movie")
    parser.add_argument(
        "--record", action="store_true", help="write the figures to docs/benchmarks.json"
    )
    args = parser.parse_args(argv)
    with common.scratch() as home:
        result = run(home, Movie(frames=args.frames, size=256), args.repeats)
    common.publish(BENCHMARK, result, args.record)
    print(f"docker/local: {result['figures']['docker_over_local']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
