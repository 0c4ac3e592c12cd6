"""The dashboard in a real headless Chromium (Debian's ``/usr/bin/chromium``, driven by Playwright; no
browser is downloaded) against a live stack: log in, watch a queue fill and drain without a reload,
requeue dead letters, pause and resume a queue, open a job's page, cancel and retry jobs from theirs,
follow the logs; a plain user is refused, and an action without the CSRF token is a 403. Each page's screenshot is saved under
``var/screenshots/`` (the path is printed).

The tests share one stack (starting one takes seconds): each watches its own jobs, and leaves the queues
quiet and running when it ends. Each has a browser of its own, so no page's event streams outlive it."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from yarl import URL

from tests.e2e.conftest import Stack, stack_starter
from tests.support import unavailable, wait_until

CHROMIUM = os.environ.get("CONVEYOR_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
ADMIN_PASSWORD = "admin's secret"
OPERATOR = ("olga", "olga's secret")
USER = ("alice", "alice's secret")
TIMEOUT_MS = 30_000


async def cli(*args: str) -> str:
    import asyncio

    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "shared.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, out.decode()
    return out.decode()


@pytest_asyncio.fixture(loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    if shutil.which(CHROMIUM) is None:
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install -e '.[dev]')")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async with stack_starter(tmp_path_factory.mktemp("dashboard")) as start_stack:
        stack = await start_stack("--handlers", "1", "--receptionists", "1", "--time-scale", "0",
                                  env={"CONVEYOR_ADMIN_PASSWORD": ADMIN_PASSWORD, "GATEWAY_REVOCATION_S": "1"})
        data = ["--data-dir", str(stack.data_dir)]
        await cli("user", "add", OPERATOR[0], "--role", "operator", "--password", OPERATOR[1], *data)
        await cli("user", "add", USER[0], "--role", "user", "--password", USER[1], *data)
        yield stack


async def token(stack: Stack, username: str, password: str) -> dict[str, str]:
    status, body, _ = await stack.request("POST", "/auth/token", json={"username": username, "password": password})
    assert status == 200, body
    return {"Authorization": f"Bearer {body['access_token']}"}


async def shoot(page: Any, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"dashboard-{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


async def log_in(browser: Any, stack: Stack, username: str, password: str, **context: Any) -> Any:
    page = await (await browser.new_context(viewport={"width": 1280, "height": 800}, **context)).new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(stack.url + "/dashboard")
    assert page.url.endswith("/dashboard/login")  # no session yet
    await page.get_by_label("Username").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Log in").click()
    await page.wait_for_load_state()
    return page


def cell(page: Any, queue: str, field: str) -> Any:
    return page.locator(f'#queues tr[data-queue="{queue}"] td[data-field="{field}"]')


async def test_an_operator_logs_in_and_watches_a_queue_fill_and_drain_live(stack: Stack, browser: Any) -> None:
    alice = await token(stack, *USER)
    page = await log_in(browser, stack, *OPERATOR)
    assert page.url.endswith("/dashboard")
    await page.locator("#live-state.on").wait_for()
    cookie = next(c for c in await page.context.cookies() if c["name"] == "conveyor_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"

    # Jobs submitted while the page is open: the numbers change without a reload.
    navigations: list[str] = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url))
    for _ in range(5):
        status, _, _ = await stack.request("POST", "/tasks", json={"description": "later", "delay_s": 6}, headers=alice)
        assert status == 201
    await page.locator('#queues tr[data-queue="task"] td[data-field="delayed"]:text-is("5")').wait_for()
    await page.locator('#queues tr[data-queue="task"] td[data-field="delayed"]:text-is("0")').wait_for()
    assert await cell(page, "task", "ready").inner_text() in ("0", "1", "2", "3", "4", "5")

    async def drained() -> bool:
        return (await cell(page, "task", "ready").inner_text() == "0"
                and await cell(page, "task", "leased").inner_text() == "0")

    await wait_until(drained, timeout_s=30, what="the task queue to drain on the page")
    assert navigations == []  # live: never reloaded
    await shoot(page, "queues")

    # The instances the registry knows, with the handler's slots.
    await page.get_by_role("link", name="Instances").click()
    await page.locator('#instances tr[data-instance="handler-1"]').wait_for()
    assert "slots busy" in await page.locator('#instances tr[data-instance="handler-1"]').inner_text()
    await shoot(page, "instances")

    # Logging out ends the session: the page sends us to the login form again.
    await page.get_by_role("button", name="Log out").click()
    await page.wait_for_url("**/dashboard/login")
    await page.goto(stack.url + "/dashboard")
    assert page.url.endswith("/dashboard/login")


async def test_a_plain_user_is_refused(stack: Stack, browser: Any) -> None:
    page = await log_in(browser, stack, *USER)
    refusal = page.locator("#refusal")
    await refusal.wait_for()
    assert "The dashboard is for operators" in await refusal.inner_text()
    assert not any(c["name"] == "conveyor_session" for c in await page.context.cookies())
    await shoot(page, "refused")
    # A wrong password is the form again, with its reason.
    page = await log_in(browser, stack, OPERATOR[0], "wrong")
    assert "Wrong username or password" in await page.locator(".error").inner_text()


async def test_actions_need_the_csrf_token(stack: Stack, browser: Any) -> None:
    page = await log_in(browser, stack, *OPERATOR)
    await page.locator("#live-state.on").wait_for()
    # The session alone (the browser's cookie, same origin) reads, but acts only with the page's token.
    answer = await page.evaluate("""async () => {
        const read = await fetch('/dashboard/api/queues');
        const bare = await fetch('/dashboard/api/dead/requeue', {method: 'POST', headers: {'Content-Type':
            'application/json'}, body: JSON.stringify({all: true})});
        const csrf = document.querySelector('meta[name="csrf-token"]').content;
        const wrong = await fetch('/dashboard/api/dead/requeue', {method: 'POST', headers: {'Content-Type':
            'application/json', 'X-CSRF-Token': csrf.slice(1) + 'x'}, body: JSON.stringify({all: true})});
        const right = await fetch('/dashboard/api/dead/requeue', {method: 'POST', headers: {'Content-Type':
            'application/json', 'X-CSRF-Token': csrf}, body: JSON.stringify({all: true})});
        const logout = await fetch('/dashboard/logout', {method: 'POST', redirect: 'manual'});
        return {read: read.status, bare: bare.status, bareBody: await bare.json(), wrong: wrong.status,
                right: right.status, logout: logout.status};
    }""")
    assert answer["read"] == 200
    assert answer["bare"] == 403 and answer["bareBody"]["details"][0]["field"] == "X-CSRF-Token"
    assert answer["wrong"] == 403
    assert answer["right"] == 200
    assert answer["logout"] == 403  # logging out is an action too
    # The public API never takes the cookie: only the dashboard's prefix does.
    status, _, _ = await stack.request("GET", "/queues", headers={"Cookie": "conveyor_session=" + (
        next(c["value"] for c in await page.context.cookies() if c["name"] == "conveyor_session"))})
    assert status == 401


async def test_dead_letters_job_page_and_logs(stack: Stack, browser: Any) -> None:
    alice = await token(stack, *USER)
    status, failing, _ = await stack.request("POST", "/tasks", json={"description": "doomed", "fail_probability": 1},
                                             headers=alice)
    assert status == 201
    operator = await token(stack, *OPERATOR)

    async def dead() -> list[dict[str, Any]]:
        _, body, _ = await stack.request("GET", "/dead", headers=operator)
        return body["items"]

    async def dead_again(job_id: str) -> bool:
        _, job, _ = await stack.request("GET", f"/jobs/{job_id}", headers=operator)
        return job["state"] == "failed" and any(item["job_id"] == job_id for item in await dead())

    await wait_until(lambda: dead_again(failing["id"]), timeout_s=60, what="the failing task to be dead-lettered")
    page = await log_in(browser, stack, *OPERATOR)

    # The job's page: its state, attempts and errors, history from its event stream, its log lines.
    await page.goto(f"{stack.url}/dashboard#/jobs/{failing['id']}")
    await page.locator('#job-facts dd[data-field="state"]:has-text("failed")').wait_for()
    await page.locator("#history tbody tr").first.wait_for()
    assert await page.locator("#history tbody tr").count() >= 2  # created, processing, ...
    await shoot(page, "job")

    # The dead letters: requeue it; it runs (and fails) again, with its kind's attempts.
    await page.get_by_role("link", name="Dead letters").click()
    row = page.locator(f'#dead tr[data-dead="{failing["id"]}"]')
    await row.wait_for()
    await shoot(page, "dead")
    await row.get_by_role("button", name="Requeue").click()
    await page.locator("#flash p:has-text('Requeued 1')").wait_for()

    async def redriven() -> bool:
        _, job, _ = await stack.request("GET", f"/jobs/{failing['id']}", headers=operator)
        return job["max_attempts"] > 3

    await wait_until(redriven, timeout_s=30, what="the job to be redriven")
    # It fails again and is a dead letter again: what the log step below requeues once more.
    await wait_until(lambda: dead_again(failing["id"]), timeout_s=60, what="the redriven job to be dead again")

    # The jobs table, filtered by kind and state, links to the job.
    await page.get_by_role("link", name="Jobs").click()
    await page.get_by_label("Kind").fill("task")
    await page.get_by_role("button", name="Filter").click()
    await page.locator(f'#jobs tr[data-job="{failing["id"]}"]').wait_for()
    await shoot(page, "jobs")

    # Logs: filtered by the job, then followed: a new line of that job shows up without a reload, pushed
    # by the server-sent event stream, not fetched by a poll.
    await page.get_by_role("link", name="Logs").click()
    # The jobs view has a "Job id" field too: fill the logs view's, once it has replaced the jobs view.
    await page.locator("#logs").wait_for()
    await page.get_by_label("Job id").fill(failing["id"])
    await page.get_by_role("button", name="Show").click()

    async def only_the_job() -> bool:
        """The filtered page has replaced the view's first, unfiltered one (up to 200 lines of anything)."""
        shown = await page.locator("#logs tbody tr").count()
        return shown > 0 and shown == await page.locator(f'#logs tbody tr a[title="{failing["id"]}"]').count()

    await wait_until(only_the_job, what="the job's lines alone")
    before = await page.locator("#logs tbody tr").count()
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    await page.get_by_label("Follow live").check()
    status, answer, _ = await stack.request("POST", "/dead/requeue", json={"job_ids": [failing["id"]]},
                                            headers=operator)
    assert (status, answer["requeued"]) == (200, [failing["id"]]), answer

    async def grew() -> bool:
        return await page.locator("#logs tbody tr").count() > before

    await wait_until(grew, timeout_s=30, what="new log lines to show up while following")
    await shoot(page, "logs")
    paths = [URL(url).path for url in asked]
    assert "/dashboard/api/logs/stream" in paths and "/dashboard/api/logs" not in paths, paths
    assert URL(next(u for u in asked if "/logs/stream" in u)).query["job_id"] == failing["id"]

    # The text filter is the server's: every line shown holds the text, in any case.
    word = (await page.locator("#logs tbody tr td.log-line").first.inner_text()).split()[0]
    await page.get_by_label("Text").fill(word.upper())
    await page.get_by_role("button", name="Show").click()

    async def filtered() -> bool:
        messages = await page.locator("#logs tbody tr td.log-line").all_inner_texts()
        return bool(messages) and all(word.lower() in message.lower() for message in messages)

    await wait_until(filtered, timeout_s=10, what=f"only lines holding {word!r} to be shown")
    assert any("q=" in url for url in asked if URL(url).path == "/dashboard/api/logs")
    # The job requeued above runs out of attempts again: the queues are quiet for the next test.
    await wait_until(lambda: dead_again(failing["id"]), timeout_s=60, what="the requeued job to be dead again")


async def test_readable_on_a_phone(stack: Stack, browser: Any) -> None:
    page = await log_in(browser, stack, *OPERATOR)
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.locator("#live-state.on").wait_for()
    await page.locator("#queues").wait_for()
    # Nothing overflows the page sideways: wide tables scroll inside their own box.
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, width
    await page.keyboard.press("Tab")  # the skip link, then the views: all reachable by keyboard
    focused = await page.evaluate("document.activeElement.textContent")
    assert focused == "Skip to content"
    await shoot(page, "queues-phone")


async def test_pause_and_resume_a_queue_and_discard_a_dead_letter(stack: Stack, browser: Any) -> None:
    alice = await token(stack, *USER)
    operator = await token(stack, *OPERATOR)
    status, _, _ = await stack.request("POST", "/tasks", json={"description": "first"}, headers=alice)
    assert status == 201
    page = await log_in(browser, stack, *OPERATOR)
    row = page.locator('#queues tr[data-queue="task"]')
    await row.wait_for()

    # Paused: the queue takes the job but hands none out; the page shows it waiting, live.
    await row.get_by_role("button", name="Pause queue task").click()
    await row.locator('td[data-field="state"]:has-text("paused")').wait_for()
    status, body, _ = await stack.request("GET", "/queues", headers=operator)
    assert {q["queue"]: q for q in body["items"]}["task"]["paused"] is True
    status, held, _ = await stack.request("POST", "/tasks", json={"description": "held"}, headers=alice)
    assert status == 201
    await row.locator('td[data-field="ready"]:text-is("1")').wait_for()
    await shoot(page, "queues-paused")
    await row.get_by_role("button", name="Resume queue task").click()
    await row.locator('td[data-field="state"]:has-text("running")').wait_for()
    await row.locator('td[data-field="ready"]:text-is("0")').wait_for()

    async def finished() -> bool:
        _, job, _ = await stack.request("GET", f"/jobs/{held['id']}", headers=alice)
        return job["state"] == "finished"

    await wait_until(finished, timeout_s=30, what="the held task to run once the queue is resumed")

    # A dead letter discarded, after the confirmation.
    status, doomed, _ = await stack.request("POST", "/tasks", json={"description": "doomed", "fail_probability": 1},
                                            headers=alice)
    assert status == 201

    async def dead() -> list[dict[str, Any]]:
        _, body, _ = await stack.request("GET", "/dead", headers=operator)
        return body["items"]

    async def doomed_dead() -> bool:
        return any(item["job_id"] == doomed["id"] for item in await dead())

    await wait_until(doomed_dead, timeout_s=60, what="the failing task to be dead-lettered")
    await page.get_by_role("link", name="Dead letters").click()
    await page.locator(f'#dead tr[data-dead="{doomed["id"]}"]').wait_for()
    await page.get_by_label(f"select {doomed['id']}").check()
    dialogs: list[str] = []

    async def confirm(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.accept()

    page.on("dialog", confirm)
    await page.get_by_role("button", name="Discard selected").click()
    await page.locator(f'#dead tr[data-dead="{doomed["id"]}"]').wait_for(state="detached")
    assert dialogs and "Discard 1 dead letters?" in dialogs[0]
    assert not await doomed_dead()


async def test_cancel_and_retry_a_job_and_requeue_dead_letters(stack: Stack, browser: Any) -> None:
    alice = await token(stack, *USER)
    operator = await token(stack, *OPERATOR)
    doomed = []
    for description in ("doomed a", "doomed b"):
        status, job, _ = await stack.request("POST", "/tasks", json={"description": description, "fail_probability": 1},
                                             headers=alice)
        assert status == 201
        doomed.append(job["id"])
    status, waiting, _ = await stack.request("POST", "/tasks", json={"description": "not yet", "delay_s": 3600},
                                             headers=alice)
    assert status == 201

    async def job(job_id: str) -> dict[str, Any]:
        _, body, _ = await stack.request("GET", f"/jobs/{job_id}", headers=operator)
        return body

    async def dead_ids() -> set[str]:
        _, body, _ = await stack.request("GET", "/dead", headers=operator)
        return {item["job_id"] for item in body["items"]}

    async def all_dead(job_ids: set[str]) -> bool:
        if not job_ids <= await dead_ids():
            return False
        return all(state == "failed" for state in [(await job(i))["state"] for i in job_ids])

    await wait_until(lambda: all_dead(set(doomed)), timeout_s=60, what="both failing tasks to be dead-lettered")
    page = await log_in(browser, stack, *OPERATOR)
    dialogs: list[str] = []

    async def confirm(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.accept()

    page.on("dialog", confirm)

    # A job still to run: its page cancels it, after a confirmation.
    await page.goto(f"{stack.url}/dashboard#/jobs/{waiting['id']}")
    await page.locator('#job-facts dd[data-field="state"]:has-text("pending")').wait_for()
    await page.get_by_role("button", name="Cancel job").click()
    await page.locator('#job-facts dd[data-field="state"]:has-text("cancelled")').wait_for()
    assert dialogs == [f"Cancel job {waiting['id']}?"]
    assert (await job(waiting["id"]))["state"] == "cancelled"
    assert await page.get_by_role("button", name="Cancel job").count() == 0  # nothing left to cancel
    await shoot(page, "job-cancelled")

    # A failed job: its page retries it (a redrive: its kind's attempts again), and it fails again.
    await page.goto(f"{stack.url}/dashboard#/jobs/{doomed[0]}")
    await page.locator('#job-facts dd[data-field="state"]:has-text("failed")').wait_for()
    await page.get_by_role("button", name="Retry (requeue from the dead letters)").click()
    await page.locator("#flash p:has-text('Requeued: it runs again')").wait_for()

    async def redriven_and_dead(job_id: str, attempts: int) -> bool:
        return (await job(job_id))["max_attempts"] >= attempts and await all_dead({job_id})

    await wait_until(lambda: redriven_and_dead(doomed[0], 6), timeout_s=60, what="the retried job to be dead again")
    await page.get_by_role("button", name="Refresh").click()
    await page.locator('#job-facts:has-text("6 of 6")').wait_for()
    await shoot(page, "job-retried")

    # The dead letters: requeue the selected ones.
    await page.get_by_role("link", name="Dead letters").click()
    for job_id in doomed:
        await page.get_by_label(f"select {job_id}").check()
    await page.get_by_role("button", name="Requeue selected").click()
    await page.locator("#flash p:has-text('Requeued 2 dead letters.')").wait_for()
    await wait_until(lambda: redriven_and_dead(doomed[0], 9), timeout_s=60, what="the first requeued one dead again")
    await wait_until(lambda: redriven_and_dead(doomed[1], 6), timeout_s=60, what="the second requeued one dead again")

    # Then all of them (every queue's): no confirmation for a requeue, which loses nothing.
    await page.get_by_role("button", name="Show").click()
    await page.locator(f'#dead tr[data-dead="{doomed[1]}"]').wait_for()
    everything = await dead_ids()
    dialogs.clear()
    await page.get_by_role("button", name="Requeue all").click()
    flashed = await page.locator("#flash p:has-text('dead letters of every queue')").inner_text()
    assert flashed.startswith("Requeued ") and int(flashed.split()[1]) >= len(doomed), flashed
    assert dialogs == []
    await wait_until(lambda: redriven_and_dead(doomed[1], 9), timeout_s=60, what="the requeued ones dead again")
    # The queues are quiet again for whatever runs next: every job requeued is a dead letter once more.
    await wait_until(lambda: all_dead(everything), timeout_s=60, what="every requeued job dead again")

    # On a phone, the dead letters' table and the job's page scroll in their own boxes; the page does not.
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.get_by_role("button", name="Show").click()
    await page.locator(f'#dead tr[data-dead="{doomed[1]}"]').wait_for()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await shoot(page, "dead-phone")
    await page.goto(f"{stack.url}/dashboard#/jobs/{doomed[1]}")
    await page.locator("#history tbody tr").first.wait_for()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 390
    await shoot(page, "job-phone")
