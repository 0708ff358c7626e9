"""The web UI in a real browser: Playwright drives Debian's Chromium, headless.

A researcher signs in (a pasted token, and the link of a credentials file), browses a
dataset and its preview, plans a job and sees its selection on the data, submits it and
watches it finish, opens its result's picture; cancels another job; an instructor extends a
course; an admin reads the audit log. Every page is checked with axe-core (no serious or
critical violation) and saved as a screenshot under ``tests/artifacts/web/``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from helpers import missing
from insitu.cli.courses import write_credentials
from insitu.client import Client
from insitu.config import Settings
from insitu.server import BackgroundServer
from insitu.units import format_size

pytestmark = pytest.mark.timeout(180)
CHROMIUM = os.environ.get("INSITU_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts" / "web"
DATASET = "test/movie"
SPEC = """\
dataset: test/movie
analysis:
  entrypoint: my_analysis:time_mean
select:
  t: [0, 60]
  y: [4, 28]
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        missing("browser", f"playwright is not installed: {exc}")
    if not Path(CHROMIUM).exists():
        missing("browser", f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def site(
    settings: Settings,
    analysis_code: Path,
    movie: tuple[Path, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[str, str, Client]]:
    """A live server whose users may run ``my_analysis`` (installed: on the path of the
    jobs' processes), with the test movie registered; (url, admin token, admin client)."""
    monkeypatch.setenv("PYTHONPATH", str(analysis_code))
    settings.local.installed_analyses = ["my_analysis"]
    server = BackgroundServer(settings).start()
    token = settings.admin_token_path.read_text().strip()
    with Client(server.url, token) as admin:
        admin.register_dataset(DATASET, str(movie[0]), description="a test two-photon movie")
        yield server.url, token, admin
    server.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    opened = context.new_page()
    yield opened
    context.close()


def _look(page: Any, name: str) -> None:
    """Save the page as a picture, and check it with axe-core: nothing serious."""
    from axe_playwright_python.sync_playwright import Axe

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    results = Axe().run(page)
    bad = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in results.response["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert bad == [], f"{name}: {bad}"


def _loaded(page: Any, image: Any) -> None:
    """Wait until ``image`` has loaded a real picture (the server answered with a PNG)."""
    image.wait_for()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )


def _sign_in(page: Any, url: str, token: str) -> None:
    page.goto(f"{url}/ui/jobs")
    assert "/ui/login" in page.url  # not signed in yet: sent to sign in, then back
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/ui/jobs$"))


def test_signing_in_with_a_token_and_with_a_credentials_link(
    site: tuple[str, str, Client], browser: Any, page: Any, tmp_path: Path
) -> None:
    url, token, admin = site
    page.goto(f"{url}/ui/login")
    _look(page, "login")
    page.get_by_label("API token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").is_visible()
    denied = admin.audit(action="POST /ui/login", outcome="denied")
    assert denied and denied[0]["outcome"] == "denied"  # a failed sign-in is audited
    _sign_in(page, url, token)
    assert page.get_by_role("heading", name="Your jobs").is_visible()
    _look(page, "jobs-empty")
    # The link a participant's credentials file holds.
    (written,) = write_credentials(tmp_path, "neuro", url, [{"user": "admin", "token": token}], [])
    link = next(line for line in written.read_text().splitlines() if "/ui/login#token=" in line)
    other = browser.new_context().new_page()
    other.goto(link.lstrip("# ").strip())
    assert "#token" not in other.url  # the token is filled in, and gone from the address
    assert other.get_by_text("Your sign-in link filled in a token").is_visible()
    assert other.get_by_label("API token").input_value() == token
    other.get_by_role("button", name="Sign in").click()  # the person decides
    other.wait_for_url(re.compile(r"/ui/jobs$"))
    other.context.close()


def test_browsing_a_dataset_shows_its_arrays_and_a_preview(
    site: tuple[str, str, Client], page: Any, movie: tuple[Path, np.ndarray]
) -> None:
    url, token, _ = site
    _sign_in(page, url, token)
    page.get_by_role("link", name="Datasets").click()
    page.get_by_role("link", name=DATASET).click()
    page.wait_for_url(re.compile(rf"/ui/datasets/{DATASET}$"))
    assert page.get_by_role("cell", name="90 x 37 x 29").is_visible()
    stored = sum(f.stat().st_size for f in movie[0].rglob("*") if f.is_file())
    row = page.get_by_role("row").filter(has_text="90 x 37 x 29").inner_text()
    assert format_size(stored) in row  # the store's own bytes, listed at registration
    preview = page.get_by_role("img", name=re.compile("middle plane"))
    preview.wait_for()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=preview.element_handle()
    )
    _look(page, "dataset")


def test_plan_submit_watch_it_finish_and_see_its_result(
    site: tuple[str, str, Client], page: Any
) -> None:
    url, token, admin = site
    _sign_in(page, url, token)
    page.get_by_role("link", name="Plan a job").first.click()
    page.get_by_label("Job spec (YAML)").fill(SPEC)
    page.get_by_role("button", name="Plan").click()
    plan = page.get_by_role("region", name="The plan")
    assert "t 0:60, y 4:28, x 0:29" in plan.inner_text()
    assert "starts" in plan.inner_text() and admin.jobs() == []  # planned, not queued
    box = page.locator(".selection").bounding_box()
    image = page.locator(".preview img").bounding_box()
    assert box is not None and image is not None
    assert box["height"] == pytest.approx(image["height"] * 24 / 37, abs=2)
    _look(page, "plan")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(r"/ui/jobs/j-[0-9a-f]+$"))
    page.locator("#job-status .state-succeeded").wait_for(timeout=90_000)  # live, then reloaded
    page.get_by_role("heading", name=re.compile("^mean")).wait_for()
    thumbnail = page.get_by_role("img", name="thumbnail of the array mean")
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle()
    )
    page.locator("#log").filter(has_text="axes").wait_for()
    assert "Array of shape 24 x 29, float" in page.inner_text("main")
    _look(page, "job-succeeded")
    page.get_by_role("link", name="Jobs", exact=True).click()
    assert page.get_by_role("cell", name=re.compile("succeeded")).count() == 1
    _look(page, "jobs")


def test_cancelling_another_job_from_its_page(site: tuple[str, str, Client], page: Any) -> None:
    url, token, admin = site
    job = admin.submit({"dataset": DATASET, "analysis": {"entrypoint": "my_analysis:slow",
                                                         "params": {"seconds": 60}}})  # fmt: skip
    _sign_in(page, url, token)
    page.goto(f"{url}/ui/jobs/{job['id']}")
    page.get_by_role("button", name="Cancel this job").click()
    page.locator("#job-status .state-cancelled").wait_for(timeout=30_000)
    assert admin.job(job["id"])["state"] == "cancelled"
    _look(page, "job-cancelled")


def test_an_instructor_extends_a_course_and_an_admin_reads_the_audit(
    site: tuple[str, str, Client], page: Any
) -> None:
    url, token, admin = site
    ada = [{"name": "Ada", "email": "ada@x.example"}]
    admin.create_course("neuro-101", ada, datasets=[DATASET], quota="jobs=1", expires="2027-01-01")
    _sign_in(page, url, token)
    page.get_by_role("link", name="Courses").click()
    course = page.get_by_role("region", name="neuro-101")
    assert "ends 2027-01-01" in course.inner_text() and "ada" in course.inner_text()
    assert "quota jobs=1;" in course.inner_text()
    _look(page, "courses")
    course.get_by_label("Extend by (days)").fill("10")
    course.get_by_role("button", name="Extend").click()
    page.get_by_role("region", name="neuro-101").filter(has_text="ends 2027-01-11").wait_for()
    page.get_by_role("link", name="Audit").click()
    assert page.get_by_role("cell", name="course.extend").is_visible()
    _look(page, "audit")


def test_pages_refuse_changes_sent_from_another_site(site: tuple[str, str, Client]) -> None:
    """The session cookie alone cannot change anything: not from a foreign form (Origin),
    not from a script without the UI's header."""
    url, token, admin = site
    job = admin.submit({"dataset": DATASET, "analysis": {"entrypoint": "my_analysis:slow",
                                                         "params": {"seconds": 30}}})  # fmt: skip
    cookies = {"insitu_token": token}
    foreign = httpx.post(f"{url}/ui/jobs/{job['id']}/cancel", cookies=cookies,
                         headers={"Origin": "https://evil.example"})  # fmt: skip
    assert foreign.status_code == 403 and "insitu&#39;s own pages" in foreign.text
    script = httpx.post(f"{url}/v1/jobs/{job['id']}/cancel", cookies=cookies)
    assert script.status_code == 403 and "Authorization header" in script.json()["detail"]
    assert admin.job(job["id"])["state"] not in ("cancelled",)
    assert httpx.get(f"{url}/v1/jobs/{job['id']}", cookies=cookies).status_code == 200
    admin.cancel(job["id"])
