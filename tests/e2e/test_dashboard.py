"""The live dashboard at / of the admin listener, in a real headless Chromium.

Chromium is driven with the Chrome DevTools Protocol over a pipe (`--remote-debugging-pipe`):
Chromium reads JSON commands on its file descriptor 3 and writes answers and events on
descriptor 4, each message ending with a NUL byte. That needs nothing beyond the Python
standard library (no websocket client, no Selenium, no chromedriver). The test:

  * loads the dashboard from a proxy on moto and waits for its first successful poll;
  * runs PUT/GET traffic (plus a few 404s and refused signatures) through the proxy with
    boto3 in a thread, reads the page's DOM twice and checks the live numbers moved
    (req/s, throughput, encrypt/decrypt, latency, per-operation table, error counters), and
    that key, backend and readiness show green;
  * saves screenshots (wide light and dark, narrow) into a pytest temporary folder and
    prints their paths;
  * stops the traffic and checks the rates fall to zero while the latency falls back to
    "since start";
  * stops the proxy and checks the page says "disconnected", then restarts it and checks the
    page recovers without a reload.

Chromium comes from the Debian package `chromium` (/usr/bin/chromium); the test fails with a
clear message when it is missing and installs nothing itself.
"""

import base64
import json
import os
import select
import subprocess
import tempfile
import threading
import time

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError

from conftest import BUCKET, Stack

CHROMIUM = "/usr/bin/chromium"
DASHBOARD_SRC = os.path.join(os.path.dirname(__file__), "..", "..", "proxy", "src", "dashboard.html")

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
]


class CdpError(RuntimeError):
    pass


class Chromium:
    """A headless Chromium and one page, driven over the DevTools protocol on a pipe."""

    def __init__(self, workdir, width=1280, height=900):
        if not os.path.exists(CHROMIUM):
            pytest.fail(f"{CHROMIUM} is missing: the dashboard test needs the Debian package `chromium` "
                        "(apt-get install chromium; scripts/bootstrap.sh installs it)", pytrace=False)
        self.profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=workdir)
        self.log_path = os.path.join(workdir, "chromium.log")
        self.log = open(self.log_path, "ab")
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()
        args = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                "--remote-debugging-pipe", "about:blank"]
        # The shell moves the two pipe ends to descriptors 3 and 4, where Chromium expects
        # them, and sends Chromium's own stdout to the log.
        self.proc = subprocess.Popen(["sh", "-c", 'exec "$@" 3<&0 4>&1 0</dev/null 1>&2', "sh", *args],
                                     stdin=to_chrome_r, stdout=from_chrome_w, stderr=self.log,
                                     start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buf = b""
        self.last_id = 0
        self.events = []
        self.session = None

    # -- protocol

    def call(self, method, params=None, session=True, timeout=30):
        self.last_id += 1
        msg = {"id": self.last_id, "method": method, "params": params or {}}
        if session and self.session:
            msg["sessionId"] = self.session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self.to_chrome, data):]
        deadline = time.time() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.last_id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def _read(self, deadline):
        while b"\0" not in self.buf:
            left = deadline - time.time()
            if left <= 0:
                raise TimeoutError(f"Chromium did not answer; log: {self.log_path}")
            ready, _, _ = select.select([self.from_chrome], [], [], left)
            if ready:
                chunk = os.read(self.from_chrome, 1 << 16)
                if not chunk:
                    raise CdpError(f"Chromium closed the DevTools pipe (exit {self.proc.poll()}); log: {self.log_path}")
                self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    # -- page helpers

    def open(self, url):
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Page.navigate", {"url": url})
        deadline = time.time() + 15
        while self.evaluate("document.readyState === 'complete' ? location.href : ''") != url:
            if time.time() > deadline:
                raise TimeoutError(f"{url} did not load; log: {self.log_path}")
            time.sleep(0.1)

    def evaluate(self, expression):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise CdpError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def page_errors(self):
        """Uncaught exceptions and console.error calls seen so far."""
        out = []
        for e in self.events:
            if e.get("method") == "Runtime.exceptionThrown":
                out.append(e["params"]["exceptionDetails"].get("exception", {}).get("description")
                           or e["params"]["exceptionDetails"].get("text"))
            elif e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") == "error":
                out.append(" ".join(str(a.get("value", a.get("description"))) for a in e["params"]["args"]))
        return out

    def screenshot(self, path, width, dark=False):
        """A full-page PNG at the given CSS width, optionally in the dark colour scheme."""
        self.call("Emulation.setEmulatedMedia", {"features": [
            {"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]})
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False})
        height = self.evaluate("Math.ceil(document.documentElement.scrollHeight)")
        self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        time.sleep(0.3)  # let layout and the sparklines settle
        png = base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])
        self.call("Emulation.clearDeviceMetricsOverride")
        self.call("Emulation.setEmulatedMedia", {"features": []})
        with open(path, "wb") as f:
            f.write(png)
        return path

    def close(self):
        try:
            self.call("Browser.close", session=False, timeout=5)
        except (CdpError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self.to_chrome, self.from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        self.log.close()


# Every element with an id: its text, data-value and data-state; plus the operation table.
READ_DOM = """(() => {
  const out = {};
  for (const el of document.querySelectorAll('[id]')) {
    out[el.id] = {text: el.textContent.trim(), value: el.dataset.value ?? null, state: el.dataset.state ?? null,
                  window: el.dataset.window ?? null};
  }
  out.__ops = Object.fromEntries([...document.querySelectorAll('#ops-body tr[data-op]')]
      .map(tr => [tr.dataset.op, [...tr.cells].map(c => c.textContent)]));
  out.__stale = document.body.classList.contains('stale');
  out.__spark_paths = document.querySelectorAll('#spark-rps path.line').length;
  return JSON.stringify(out);
})()"""


def read_dom(browser):
    return json.loads(browser.evaluate(READ_DOM))


def num(dom, el):
    v = dom[el]["value"]
    return float(v) if v not in (None, "") else None


def wait_dom(browser, pred, what, timeout=30):
    deadline = time.time() + timeout
    dom = None
    while time.time() < deadline:
        dom = read_dom(browser)
        try:
            if pred(dom):
                return dom
        except (KeyError, TypeError):  # page not (fully) there yet
            pass
        time.sleep(0.25)
    summary = {k: v for k, v in (dom or {}).items() if not k.startswith("__")} if dom else None
    raise AssertionError(f"dashboard never showed {what} within {timeout}s; last DOM: {json.dumps(summary)[:3000]}")


class Traffic(threading.Thread):
    """PUT/GET through the proxy until stopped, with the odd 404 and refused signature."""

    def __init__(self, stack):
        super().__init__(daemon=True)
        self.stack = stack
        self.stop_event = threading.Event()
        self.count = 0
        self.error = None

    def run(self):
        try:
            s3 = self.stack.boto()
            p = self.stack.proxy
            bad = boto3.client("s3", endpoint_url=p.endpoint, region_name="us-east-1",
                               aws_access_key_id=p.access_key, aws_secret_access_key="wrong-secret",
                               config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
            body = os.urandom(192 * 1024)
            i = 0
            while not self.stop_event.is_set():
                key = f"dashboard/{i % 4}"
                s3.put_object(Bucket=BUCKET, Key=key, Body=body)
                assert s3.get_object(Bucket=BUCKET, Key=key)["Body"].read() == body
                if i % 5 == 0:
                    for call in (lambda: s3.head_object(Bucket=BUCKET, Key="dashboard/missing"),
                                 lambda: bad.get_object(Bucket=BUCKET, Key=key)):
                        try:
                            call()
                        except ClientError:
                            pass
                i += 1
                self.count = i
                time.sleep(0.02)
        except Exception as e:  # reported by stop()
            self.error = e

    def stop(self):
        self.stop_event.set()
        self.join(30)
        if self.error:
            raise self.error


@pytest.fixture(scope="module")
def dash_stack(workroot):
    d = tempfile.mkdtemp(prefix="dashboard-moto-", dir=workroot)
    s = Stack(d, "moto", tls=False)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser(dash_stack):
    b = Chromium(dash_stack.workdir)
    yield b
    b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Screenshots go to a pytest temporary folder (kept for the last few runs)."""
    return tmp_path_factory.mktemp("dashboard-screenshots")


def test_the_proxy_serves_this_dashboard(dash_stack):
    status, body = dash_stack.proxy.admin_get("/")
    assert status == 200
    with open(DASHBOARD_SRC, "rb") as f:
        assert body == f.read(), "the proxy binary serves an older dashboard.html: run `cargo build --bins`"
    assert b"<script src" not in body and b"<link" not in body and b"@import" not in body, \
        "the dashboard must be self-contained (no external scripts, styles or fonts)"


def test_live_numbers_under_traffic(dash_stack, browser, shots, capsys):
    proxy = dash_stack.proxy
    browser.open(proxy.admin_url + "/")
    idle = wait_dom(browser, lambda d: d["conn-status"]["text"] == "live", "a first successful poll", timeout=20)
    _, info = proxy.admin_get("/api/v1/info")
    info = json.loads(info)
    assert idle["version"]["text"] == "v" + info["version"]
    assert info["filters"] and idle["filters"]["value"] == ",".join(info["filters"])
    assert idle["key-status"]["text"] == "Loaded" and idle["key-status"]["state"] == "ok"
    assert idle["backend-status"]["text"] == "Up" and idle["backend-status"]["state"] == "ok"
    assert idle["ready-status"]["text"] == "Ready" and idle["ready-status"]["state"] == "ok"

    traffic = Traffic(dash_stack)
    traffic.start()
    try:
        def busy(d):
            return (d["conn-status"]["text"] == "live"
                    and (num(d, "rps-total") or 0) > 0
                    and (num(d, "throughput-in") or 0) > 0 and (num(d, "throughput-out") or 0) > 0
                    and (num(d, "encrypt-rate") or 0) > 0 and (num(d, "decrypt-rate") or 0) > 0
                    and d["latency-window"]["window"] == "interval" and (num(d, "latency-p99") or 0) > 0)

        first = wait_dom(browser, busy, "non-zero rates while traffic runs")
        time.sleep(3)
        second = wait_dom(browser, lambda d: busy(d) and num(d, "total-requests") > num(first, "total-requests")
                          and d["last-update"]["value"] != first["last-update"]["value"],
                          "the numbers moving on", timeout=15)
        # Wait for a refused signature and a 404 to show up in the error panel.
        second = wait_dom(browser, lambda d: busy(d) and num(d, "err-auth-total") > 0 and num(d, "err-4xx-total") > 0,
                          "the auth failure and 4xx counters", timeout=15)
        wide = browser.screenshot(str(shots / "dashboard.png"), 1280)
        dark = browser.screenshot(str(shots / "dashboard-dark.png"), 1280, dark=True)
        narrow = browser.screenshot(str(shots / "dashboard-narrow.png"), 400)
    finally:
        traffic.stop()
    with capsys.disabled():
        print(f"\ndashboard screenshots: {wide} {dark} {narrow}")

    assert traffic.count > 0
    for d in (first, second):
        assert d["key-status"]["text"] == "Loaded"
        assert d["backend-status"]["text"] == "Up"
        assert d["ready-status"]["text"] == "Ready"
        assert d["throughput-in"]["text"].endswith("/s")
        for q in ("latency-p50", "latency-p90", "latency-p99"):
            assert d[q]["text"].endswith("s"), d[q]
        assert num(d, "latency-p50") <= num(d, "latency-p90") <= num(d, "latency-p99")
    assert num(second, "total-requests") > num(first, "total-requests")
    assert num(second, "bytes-in-total") > num(first, "bytes-in-total")
    assert num(second, "bytes-encrypted-total") > num(first, "bytes-encrypted-total")
    assert second["last-update"]["text"] != first["last-update"]["text"]
    assert {"PutObject", "GetObject"} <= set(second["__ops"]), second["__ops"]
    assert int(second["__ops"]["PutObject"][2].replace(",", "")) > 0
    assert "signature:" in second["err-auth-detail"]["text"], second["err-auth-detail"]
    assert second["__spark_paths"] >= 1
    assert browser.page_errors() == []

    # Idle: rates fall to zero, latency falls back to the whole run.
    idle = wait_dom(browser, lambda d: num(d, "rps-total") == 0 and num(d, "throughput-in") == 0
                    and d["latency-window"]["window"] == "start", "idle rates", timeout=15)
    assert num(idle, "latency-p99") > 0
    assert idle["active-requests"]["text"] == "0"
    assert idle["rps-total"]["text"] == "0"


def test_disconnect_and_recovery(dash_stack, browser, shots, capsys):
    proxy = dash_stack.proxy
    before = wait_dom(browser, lambda d: d["conn-status"]["text"] == "live", "a live dashboard", timeout=20)
    proxy.stop()
    down = wait_dom(browser, lambda d: d["conn-status"]["text"] == "disconnected", "disconnected", timeout=15)
    assert down["__stale"]
    assert "retrying" in down["conn-banner"]["text"]
    assert down["ready-status"]["text"] == "Unreachable" and down["ready-status"]["state"] == "bad"
    assert down["key-status"]["state"] == down["backend-status"]["state"] == "unknown"
    # The last numbers stay on screen (dimmed) rather than being cleared.
    assert down["total-requests"]["value"] == before["total-requests"]["value"]
    path = browser.screenshot(str(shots / "dashboard-disconnected.png"), 1280)
    with capsys.disabled():
        print(f"\ndisconnected screenshot: {path}")

    proxy.start()
    proxy.wait_ready()
    up = wait_dom(browser, lambda d: d["conn-status"]["text"] == "live" and d["key-status"]["text"] == "Loaded",
                  "recovery after the proxy restarted", timeout=20)
    assert not up["__stale"]
    assert up["conn-banner"]["text"] == ""
    # The restarted proxy's counters start again from zero; rates never go negative.
    assert num(up, "total-requests") < num(before, "total-requests")
    up = wait_dom(browser, lambda d: num(d, "rps-total") is not None, "a rate after the restart", timeout=10)
    assert num(up, "rps-total") >= 0
    assert browser.page_errors() == []
