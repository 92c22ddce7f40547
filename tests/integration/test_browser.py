"""The Airflow UI in a real headless Chromium, driven through the Chrome DevTools Protocol.

Logs in with the simple auth manager's form, adds CoinStats connections through "Add Connection" (the
provider's labelled fields), runs the UI's connection test, and triggers ``coinstats_portfolio_sync``
from its Params form, then waits for that run to succeed. Assertions are on DOM text; screenshots go to
``artifacts/screenshots/`` for people to look at.

Chromium is installed with apt when missing (the test fails, never skips, if that is impossible). It is
driven with the DevTools protocol over a websocket (``websockets``, already an Airflow dependency), so no
WebDriver or browser download is needed.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import httpx
import psutil
import pytest
from websockets.sync.client import ClientConnection, connect

from tests.helpers.airflow_stack import DAG_ID, EXCHANGE_ACCOUNTS, ROOT, AirflowStack, StackError, wait_until
from tests.helpers.canary import assert_no_fragment

pytest_plugins = ["tests.helpers.postgres_server", "tests.helpers.airflow_stack"]
pytestmark = pytest.mark.slow

SCREENSHOTS = ROOT / "artifacts" / "screenshots"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",
    "--disable-dev-shm-usage",
    "--disable-crash-reporter",
    "--window-size=1440,1000",
)
#: DevTools errors of an evaluation that raced with a navigation.
TRANSIENT_ERRORS = ("navigated or closed", "Cannot find context", "Execution context was destroyed")
PARAM_TITLES = (
    "Exchange connections",
    "Datasets",
    "Sync wait timeout (minutes)",
    "Sync status poll interval (seconds)",
    "Credit budget of the run",
    "Wait in the triggerer",
)


def ensure_chromium() -> str:
    """Return the Chromium binary, installing the Debian ``chromium`` package with apt if it is missing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(
            "Chromium is not installed and cannot be installed automatically (needs root and apt-get). "
            "Install it with: apt-get install -y --no-install-recommends chromium",
            pytrace=False,
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{' '.join(cmd)} did not finish within 900s", pytrace=False)
        if proc.returncode != 0:
            pytest.fail(f"could not install Chromium: {' '.join(cmd)}:\n{proc.stderr[-2000:]}", pytrace=False)
    found = shutil.which("chromium")
    if found is None:
        pytest.fail("the chromium package was installed but no chromium binary is on PATH", pytrace=False)
    return found


def js_string(value: str) -> str:
    """A JavaScript string literal."""
    return json.dumps(value)


def dialog(title: str) -> str:
    """JS expression: the open dialog whose text contains ``title``."""
    return f"Array.from(document.querySelectorAll('[role=dialog]')).find(d => d.innerText.includes({js_string(title)}))"


def button(text: str, scope: str = "document") -> str:
    """JS expression: the last button (inside ``scope``) whose visible text is exactly ``text``."""
    return (
        f"Array.from(({scope}).querySelectorAll('button')).filter(b => b.innerText.trim() === {js_string(text)}).pop()"
    )


def row_button(row_text: str, label: str) -> str:
    """JS expression: the button labelled ``label`` in the table row whose first cell is ``row_text``."""
    row = (
        "Array.from(document.querySelectorAll('tr')).find(r => r.querySelector('td') && "
        f"Array.from(r.querySelectorAll('td')).some(c => c.innerText.trim() === {js_string(row_text)}))"
    )
    return f"({row})?.querySelector('button[aria-label={js_string(label)}]')"


class Browser:
    """A headless Chromium with one page, controlled over the DevTools protocol.

    :param binary: The Chromium executable.
    :param timeout: Default seconds for every wait.
    """

    def __init__(self, binary: str, *, timeout: float = 30) -> None:
        self.binary = binary
        self.timeout = timeout
        self.root = Path(tempfile.mkdtemp(prefix="coinstats-chromium-"))
        self.profile = self.root / "profile"
        self.log_path = self.root / "chromium.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._ws: ClientConnection | None = None
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> Browser:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={self.profile}",
                    "--remote-debugging-address=127.0.0.1",
                    "--remote-debugging-port=0",
                    "about:blank",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
                # Keeps Chromium's config and its crashpad handlers' database in our temp dir (they
                # detach into their own sessions; close() finds them by that path).
                env={
                    **os.environ,
                    "XDG_CONFIG_HOME": str(self.root / "config"),
                    "XDG_CACHE_HOME": str(self.root / "cache"),
                },
            )
        active_port = self.profile / "DevToolsActivePort"

        def devtools_port() -> int | None:
            if self.process is not None and self.process.poll() is not None:
                raise StackError(f"chromium exited with {self.process.returncode}: {self._log_tail()}")
            lines = active_port.read_text().splitlines() if active_port.exists() else []
            return int(lines[0]) if len(lines) >= 2 else None

        port = wait_until("chromium's DevTools port", devtools_port, timeout=60, interval=0.2)
        with httpx.Client(trust_env=False, timeout=10) as client:
            targets = wait_until(
                "a page target",
                lambda: [t for t in client.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"],
                timeout=30,
                interval=0.2,
            )
        # No keepalive pings and no read-queue limit: while a test waits on the REST API, DevTools
        # events pile up unread, and a full queue would stall the connection.
        self._ws = connect(
            targets[0]["webSocketDebuggerUrl"], max_size=None, max_queue=None, ping_interval=None, open_timeout=30
        ).__enter__()
        for domain in ("Page", "Runtime", "Network"):
            self.call(f"{domain}.enable")

    def _log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""

    def close(self) -> None:
        """Close the connection, stop Chromium and every process it started, and delete the profile."""
        if self._ws is not None:
            with contextlib.suppress(Exception):
                self._ws.close()
            self._ws = None
        if self.process is not None:
            processes = [psutil.Process(self.process.pid)] if self.process.poll() is None else []
            with contextlib.suppress(psutil.NoSuchProcess):
                processes += processes[0].children(recursive=True) if processes else []
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            _, alive = psutil.wait_procs(processes, timeout=10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            for process in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            psutil.wait_procs(alive, timeout=10)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
            self.process = None
        strays = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if any(str(self.root) in arg for arg in process.cmdline()):
                    strays.append(process)
        for process in strays:
            with contextlib.suppress(psutil.Error):
                process.kill()
        psutil.wait_procs(strays, timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- protocol ---------------------------------------------------------------------------------

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result; events received meanwhile are kept."""
        if self._ws is None:
            raise StackError("the browser is not running")
        self._next_id += 1
        request_id = self._next_id
        self._ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            message = json.loads(self._ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("id") == request_id:
                if "error" in message:
                    raise StackError(f"{method} failed: {message['error']}")
                return dict(message.get("result", {}))
            if "method" in message:
                self.events.append(message)

    def js(self, expression: str) -> Any:
        """Evaluate a JavaScript expression in the page and return its (JSON) value."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise StackError(f"JavaScript failed: {result['exceptionDetails'].get('text')} in {expression[:200]}")
        return result.get("result", {}).get("value")

    def wait_js(self, what: str, expression: str, timeout: float | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; return its value.

        Evaluations that fail because the page is navigating (its context is gone) count as "not yet".
        """

        def probe() -> Any:
            try:
                return self.js(expression) or None
            except StackError as err:
                if any(part in str(err) for part in TRANSIENT_ERRORS):
                    return None
                raise

        return wait_until(what, probe, timeout=timeout or self.timeout, interval=0.2)

    def navigate(self, url: str) -> None:
        """Open ``url`` and wait until the document is loaded."""
        self.call("Page.navigate", url=url)
        self.wait_js(f"{url} to load", "document.readyState === 'complete' && location.href !== 'about:blank'")

    def text(self) -> str:
        """The page's visible text."""
        return str(self.js("document.body.innerText"))

    def wait_text(self, *texts: str, scope: str = "document.body", timeout: float | None = None) -> str:
        """Wait until every one of ``texts`` is visible (in ``scope``); return the scope's text."""
        checks = " && ".join(f"t.includes({js_string(t)})" for t in texts)
        return str(
            self.wait_js(
                f"the text {texts!r}",
                f"(() => {{ const e = {scope}; const t = e ? e.innerText : ''; return ({checks}) ? t : null; }})()",
                timeout,
            )
        )

    def click(self, element: str) -> None:
        """Click the centre of a visible element with real mouse events (as a user would).

        Waits until the element has stopped moving (dialogs and accordions animate), so the click
        lands on it and not on whatever was there a moment earlier.
        """
        rect = (
            f"(() => {{ const e = {element}; if (!e) return null; "
            "const r = e.getBoundingClientRect(); "
            "return r.width > 0 && r.height > 0 ? [r.x + r.width / 2, r.y + r.height / 2] : null; })()"
        )
        self.wait_js(f"{element} to exist", f"!!({element})")
        self.js(f"({element}).scrollIntoView({{block: 'center', behavior: 'instant'}})")
        previous: list[float] = []

        def settled() -> list[float] | None:
            nonlocal previous
            current = self.js(rect)
            stable = current is not None and current == previous
            previous = current
            return current if stable else None

        x, y = wait_until(f"a visible, settled {element}", settled, timeout=self.timeout, interval=0.15)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def type(self, element: str, text: str, *, replace: bool = False) -> None:
        """Click into an input and type ``text`` (replacing its content when ``replace``)."""
        self.click(element)
        self.wait_js(f"{element} to have the focus", f"document.activeElement === ({element})", timeout=5)
        if replace:
            self.js(f"({element}).select()")
        self.call("Input.insertText", text=text)

    def choose(self, combobox: str, option: str) -> None:
        """Pick ``option`` in a react-select combobox by typing it and clicking the matching option."""
        self.type(combobox, option)
        self.click(
            "Array.from(document.querySelectorAll('[role=option]'))"
            f".find(o => o.innerText.trim() === {js_string(option)})"
        )

    def expand(self, section: str, scope: str) -> None:
        """Open an accordion section (a no-op when it is already open)."""
        trigger = button(section, scope)
        self.wait_js(f"the {section} section", f"!!({trigger})")
        if self.js(f"({trigger}).getAttribute('aria-expanded')") != "true":
            self.click(trigger)
        self.wait_js(f"the {section} section to open", f"({trigger}).getAttribute('aria-expanded') === 'true'")

    def screenshot(self, name: str) -> Path:
        """Save a PNG of the viewport under ``artifacts/screenshots/``."""
        self.wait_js(
            "animations to finish",
            "document.getAnimations().every(a => a.playState !== 'running' "
            "|| a.effect?.getTiming().iterations === Infinity)",
        )
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path

    def everything(self) -> str:
        """The page's HTML plus the current value of every input and textarea (not part of the HTML)."""
        values = self.js("Array.from(document.querySelectorAll('input, textarea')).map(e => e.value).join('\\n')")
        return f"{self.js('document.documentElement.outerHTML')}\n{values}"

    def posted(self, url_part: str) -> list[dict[str, Any]]:
        """JSON bodies of the POST requests the page sent to URLs containing ``url_part``."""
        bodies = []
        for event in self.events:
            if event.get("method") != "Network.requestWillBeSent":
                continue
            request = event["params"]["request"]
            if request["method"] == "POST" and url_part in request["url"] and request.get("postData"):
                bodies.append(json.loads(request["postData"]))
        return bodies


@pytest.fixture(scope="module")
def browser(airflow_stack: AirflowStack) -> Iterator[Browser]:
    """A Chromium logged into the stack's UI as the admin, through the simple auth manager's form."""
    with Browser(ensure_chromium()) as chromium:
        chromium.navigate(f"{airflow_stack.base_url}/")
        chromium.wait_js("the login form", "location.pathname.startsWith('/auth/login')")
        chromium.wait_text("Sign into Airflow")
        chromium.type("document.querySelector('input[name=username]')", airflow_stack.admin_user)
        chromium.type("document.querySelector('input[name=password]')", airflow_stack.admin_password)
        chromium.screenshot("01-login")
        chromium.click(button("Sign in"))
        chromium.wait_js("the home page", "!location.pathname.startsWith('/auth/')")
        chromium.wait_text("Dags")
        yield chromium


def assert_no_secret(stack: AirflowStack, where: str, text: str, *, skip: tuple[str, ...] = ()) -> None:
    shown = {name: value for name, value in stack.canaries.items() if name not in skip}
    assert_no_fragment(shown, text, where=where)


def open_add_connection(browser: Browser, stack: AirflowStack) -> str:
    browser.navigate(f"{stack.base_url}/connections")
    browser.click(button("Add Connection"))
    form = dialog("Connection Type")
    browser.wait_text("Add Connection", "Connection ID", scope=form)
    return form


def test_add_connection_form_shows_the_provider_fields(browser: Browser, airflow_stack: AirflowStack) -> None:
    stack = airflow_stack
    form = open_add_connection(browser, stack)
    browser.type(f"({form}).querySelector('input[name=connection_id]')", "ui_okx_account")
    browser.choose(f"({form}).querySelector('input[role=combobox]')", "CoinStats")
    text = browser.wait_text("Base URL", "CoinStats API key", scope=form)
    assert "Login" not in text
    assert "Schema" not in text
    placeholders = browser.js(f"Array.from(({form}).querySelectorAll('input')).map(i => i.placeholder).join('|')")
    assert "https://openapiv1.coinstats.app" in placeholders
    browser.screenshot("02-add-connection-coinstats-standard")
    browser.expand("Extra Fields", form)
    browser.wait_text("Request timeout (seconds)", "Max retries", "Credit budget per task", scope=form)
    browser.screenshot("03-add-connection-coinstats-extra")

    browser.choose(f"({form}).querySelector('input[role=combobox]')", "CoinStats exchange account")
    browser.expand("Standard Fields", form)
    text = browser.wait_text("Exchange API key", "Exchange API secret", scope=form)
    assert "Base URL" not in text
    assert "Host" not in text
    secrets = stack.canaries
    browser.type(f"({form}).querySelector('input[name=login]')", secrets["coinstats_exchange_okx.login"])
    browser.type(f"({form}).querySelector('input[name=password]')", secrets["coinstats_exchange_okx.password"])
    browser.screenshot("04-add-connection-exchange-standard")
    browser.expand("Extra Fields", form)
    browser.wait_text("CoinStats exchange id", "Passphrase", "Portfolio name", "CoinStats connection id", scope=form)
    browser.type(f"({form}).querySelector('input[name=element_connection_id]')", "okx")
    browser.type(
        f"({form}).querySelector('input[name=element_passphrase]')", secrets["coinstats_exchange_okx.passphrase"]
    )
    assert browser.js(f"({form}).querySelector('input[name=element_passphrase]').type") == "password"
    browser.screenshot("05-add-connection-exchange-extra")
    browser.click(button("Save", form))
    browser.wait_js("the dialog to close", f"!({form})")
    browser.navigate(f"{stack.base_url}/connections")
    browser.wait_text("ui_okx_account")

    saved = stack.api("GET", "/connections/ui_okx_account")
    assert saved["conn_type"] == "coinstats_exchange"
    assert json.loads(saved["extra"])["connection_id"] == "okx"
    assert_no_secret(
        stack, "the REST view of the saved connection", json.dumps(saved), skip=("coinstats_exchange_okx.login",)
    )
    assert_no_secret(stack, "the connection list", browser.everything())
    browser.screenshot("06-connection-list")

    # The edit form shows the stored secrets masked; the exchange API key is the connection's Login,
    # which Airflow never masks.
    browser.click(row_button("coinstats_exchange_okx", "Edit Connection"))
    edit = dialog("Connection Type")
    browser.wait_text("Exchange API key", scope=edit)
    assert_no_secret(stack, "the edit form", browser.everything(), skip=("coinstats_exchange_okx.login",))
    browser.screenshot("07-edit-exchange-connection")


def test_connection_test_button(browser: Browser, airflow_stack: AirflowStack) -> None:
    stack = airflow_stack
    form = open_add_connection(browser, stack)
    browser.type(f"({form}).querySelector('input[name=connection_id]')", "ui_coinstats")
    browser.choose(f"({form}).querySelector('input[role=combobox]')", "CoinStats")
    host, port = stack.sandbox_url.rsplit(":", 1)
    browser.type(f"({form}).querySelector('input[name=host]')", host)
    browser.type(f"({form}).querySelector('input[name=password]')", stack.canaries["api_key"])
    # Airflow 3.3.2's list "Test" button sends port 0 for a connection without a port, which the API
    # rejects as "a different endpoint" (apache/airflow#73298); an explicit port avoids that.
    browser.type(f"({form}).querySelector('input[name=port]')", port)
    browser.click(button("Save", form))
    browser.wait_js("the dialog to close", f"!({form})")
    browser.navigate(f"{stack.base_url}/connections")
    browser.wait_text("ui_coinstats")

    browser.click(row_button("ui_coinstats", "Test Connection"))
    toast = browser.wait_text(
        "Test Connection Successful",
        "Connected to CoinStats at",
        scope="document.querySelector('[data-scope=toast][data-part=group]')",
    )
    assert "credits left" in toast
    browser.screenshot("08-connection-test-success")
    assert_no_secret(stack, "the page after the connection test", browser.everything())
    body = browser.posted("/api/v2/connections/test")[-1]
    assert body["connection_id"] == "ui_coinstats"
    assert body["password"] == "***"  # the UI never sends the stored key back


def test_trigger_from_the_params_form(browser: Browser, airflow_stack: AirflowStack) -> None:
    stack = airflow_stack
    browser.navigate(f"{stack.base_url}/dags/{DAG_ID}")
    browser.click(button("Trigger"))
    form = dialog("Run Parameters")
    text = browser.wait_text(*PARAM_TITLES, scope=form)
    assert "coinstats_exchange and coinstats_wallet connection ids to sync" in text
    assert browser.js(f"({form}).querySelector('textarea[name=element_datasets]').value").split() == [
        "value",
        "coins",
        "transactions",
    ]
    browser.type(f"({form}).querySelector('textarea[name=element_account_conn_ids]')", "\n".join(EXCHANGE_ACCOUNTS))
    browser.screenshot("09-trigger-params-form")
    browser.type(f"({form}).querySelector('input[name=element_sync_poll_seconds]')", "2", replace=True)
    browser.screenshot("10-trigger-params-form-poll-interval")
    browser.click(button("Trigger", form))

    run_path = browser.wait_js("the new run's page", "location.pathname.includes('/runs/') && location.pathname")
    run_id = unquote(str(run_path).rsplit("/runs/", 1)[1])
    posted = browser.posted(f"/api/v2/dags/{DAG_ID}/dagRuns")[-1]["conf"]
    assert posted["account_conn_ids"] == list(EXCHANGE_ACCOUNTS)
    assert posted["sync_poll_seconds"] == 2
    assert posted["datasets"] == ["value", "coins", "transactions"]
    assert posted["deferrable"] is True
    run = stack.api("GET", f"/dags/{DAG_ID}/dagRuns/{run_id}")
    assert run["conf"] == posted
    assert run["triggering_user_name"] == stack.admin_user

    finished = stack.wait_for_run(run_id, timeout=360)
    assert finished["state"] == "success", [
        (ti["task_id"], ti["map_index"], ti["state"]) for ti in stack.task_instances(run_id)
    ]
    browser.navigate(f"{stack.base_url}{run_path}")
    browser.wait_text("Success", "connect_exchange_portfolio", "summary")
    browser.screenshot("11-run-succeeded")
    assert_no_secret(stack, "the run page", browser.everything())
