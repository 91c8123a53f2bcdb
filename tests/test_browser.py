"""show_neuron's page and the report in a real, headless Chromium: rendered, silent, offline.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: file
descriptors 3 and 4, no port opened, not even on loopback), with the stdlib only. For each page
the test checks that every circuitsvis widget rendered its token spans, that hostile token
strings are text (no element, no script run), that the console logged no error and no
exception, that no request left ``file:`` or ``data:``, and it saves a full-page screenshot
in the test's ``tmp_path`` (kept by pytest for the last runs, to look at). Without Chromium it
skips, saying so (``.ci/run`` installs Debian's ``chromium``).
"""

import base64
import json
import os
import select
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from test_render import HOSTILE, hostile_profile, widget_props

import tl_neuronkinds as nk
from tl_neuronkinds.present import render
from tl_neuronkinds.present.report import report

pytestmark = [
    pytest.mark.slow,  # each test starts a browser
    pytest.mark.filterwarnings("ignore::tl_neuronkinds.kinds.EvidenceWarning"),
]

BROWSER = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
if BROWSER is None:
    pytest.skip(
        "no Chromium on PATH (chromium, chromium-browser or google-chrome): .ci/run installs "
        "Debian's chromium package",
        allow_module_level=True,
    )
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--no-first-run", "--no-default-browser-check", "--disable-extensions", "--disable-sync",
    "--disable-component-update", "--disable-dev-shm-usage", "--mute-audio",
    "--hide-scrollbars", "--window-size=1200,900", "--remote-debugging-pipe",
]  # fmt: skip
TIMEOUT = 60.0


class Chromium:
    """A headless Chromium and one page, spoken to over the DevTools pipe (NUL-ended JSON)."""

    def __init__(self, profile_dir: Path, log: Path) -> None:
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()
        to_chrome, from_chrome = _above_4(to_chrome), _above_4(from_chrome)
        # Chromium reads commands on fd 3 and writes on fd 4.
        with open(log, "wb") as out:
            actions = [
                (os.POSIX_SPAWN_DUP2, to_chrome, 3),
                (os.POSIX_SPAWN_DUP2, from_chrome, 4),
                (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                (os.POSIX_SPAWN_DUP2, out.fileno(), 2),
            ]
            argv = [BROWSER, *FLAGS, f"--user-data-dir={profile_dir}", "about:blank"]
            self.pid = os.posix_spawn(BROWSER, argv, dict(os.environ), file_actions=actions)
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        page = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        attached = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)
        self.session = attached["sessionId"]

    def _message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def page(self, method: str, **params: Any) -> dict[str, Any]:
        return self.call(method, self.session, **params)

    def evaluate(self, expression: str) -> Any:
        result = self.page("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = TIMEOUT) -> None:
        """Poll ``expression`` until it is true (events keep arriving meanwhile)."""
        deadline = time.monotonic() + timeout
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {expression}")
            time.sleep(0.1)

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (OSError, RuntimeError, TimeoutError):
            pass
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.05)
        os.close(self._write)
        os.close(self._read)


def _above_4(fd: int) -> int:
    """A copy of ``fd`` numbered above 4, so that dup2 onto 3 / 4 always clears close-on-exec."""
    import fcntl

    copy = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 5)
    os.close(fd)
    return copy


def open_page(path: Path, tmp_path: Path, n_widgets: int, extra: str = "null") -> dict[str, Any]:
    """Load ``path`` in Chromium, wait until its widgets rendered; what the page did (and the
    value of the JavaScript expression ``extra``)."""
    browser = Chromium(tmp_path / "chromium-profile", tmp_path / "chromium.log")
    try:
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.page(f"{domain}.enable")
        browser.page("Page.navigate", url=path.as_uri())
        browser.wait_for("document.readyState === 'complete'")
        browser.wait_for(f"document.querySelectorAll('.colored-tokens').length >= {n_widgets}")
        time.sleep(0.3)  # let anything late (a failing request, a log line) arrive
        state = browser.evaluate(
            """({
              widgets: [...document.querySelectorAll('.nk-widget')].map(w => ({
                id: w.id, rendered: !!w.querySelector('.colored-tokens'),
                tokens: [...w.querySelectorAll('.colored-tokens > span > span')]
                        .map(s => s.textContent)})),
              scripts: document.scripts.length,
              images: document.images.length,
              pwned: window.nkPwned === undefined ? null : window.nkPwned,
              title: document.title,
              extra: """
            + extra
            + """,
            })"""
        )
        size = browser.page("Page.getLayoutMetrics")["cssContentSize"]
        shot = browser.page(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000),
                  "scale": 1},
        )  # fmt: skip
        state["png"] = base64.b64decode(shot["data"])
    finally:
        browser.close()
    state["events"] = browser.events
    return state


def check_quiet_and_offline(state: dict[str, Any]) -> None:
    """No console error or warning, no uncaught exception, no request beyond file: and data:."""
    events = state["events"]
    console = [
        e["params"] for e in events
        if e.get("method") == "Runtime.consoleAPICalled"
        and e["params"]["type"] in ("error", "warning", "assert")
    ]  # fmt: skip
    logged = [
        e["params"]["entry"] for e in events
        if e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] in ("error", "warning")
    ]  # fmt: skip
    thrown = [e["params"] for e in events if e.get("method") == "Runtime.exceptionThrown"]
    assert (console, logged, thrown) == ([], [], [])
    urls = [
        e["params"]["request"]["url"]
        for e in events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert urls and all(url.startswith(("file:", "data:")) for url in urls), urls
    failed = [e["params"] for e in events if e.get("method") == "Network.loadingFailed"]
    assert failed == []


def save_screenshot(png: bytes, tmp_path: Path, name: str) -> Path:
    """Check ``png`` is a real screenshot and keep it in the test's ``tmp_path``."""
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    (tmp_path / name).write_bytes(png)
    return tmp_path / name


@pytest.fixture(scope="module")
def planted():
    from planted import BOS, VOCAB, planted_model, planted_tokens

    model, tokens = planted_model(), planted_tokens(n_seq=64)
    profile = nk.record(model, tokens, bos_token_id=BOS, progress=False, top_k=6)
    profile.token_strings = list(VOCAB)
    return model, tokens, hostile_profile(profile)


def test_show_neuron_page_renders_offline_with_hostile_tokens(planted, tmp_path) -> None:
    model, tokens, profile = planted
    views = [nk.show_neuron(model, profile, 0, neuron, tokens=tokens) for neuron in (2, 3, 5)]
    fragments = [v.fragment() for v in views]
    # The same widget twice on one page: both must render (ids get a page-wide counter).
    fragments.append(fragments[0])
    path = tmp_path / "neurons.html"
    path.write_text(render.page("Hostile <neurons>", fragments), encoding="utf-8")
    contexts = [c for v in [*views, views[0]] for c in v.contexts.itertuples()]
    expected = [[render.visible(profile.token_strings[i]) for i in c.token_ids] for c in contexts]
    assert any(set(HOSTILE.values()) & {profile.token_strings[i] for i in c.token_ids}
               for c in contexts)  # fmt: skip

    state = open_page(path, tmp_path, len(contexts))
    check_quiet_and_offline(state)
    widgets = state["widgets"]
    assert all(w["rendered"] for w in widgets) and len(widgets) == len(contexts)
    assert len({w["id"] for w in widgets}) == len(widgets)
    # circuitsvis shows whitespace as no-break spaces and a newline as a line break.
    shown = [[t.replace("\xa0", " ") for t in w["tokens"]] for w in widgets]
    assert shown == [[t.replace("\n", " ").replace("\t", " ") for t in ctx] for ctx in expected]
    assert state["pwned"] is None and state["images"] == 0
    assert state["scripts"] == 1 + len(contexts)  # the bundle and one per widget
    assert state["title"] == "Hostile <neurons>"
    save_screenshot(state["png"], tmp_path, "show_neuron.png")


def test_saved_view_renders_offline(planted, tmp_path) -> None:
    model, tokens, profile = planted
    view = nk.show_neuron(model, profile, 1, 3, tokens=tokens)
    path = view.save(tmp_path / "view.html")
    assert len(widget_props(view.fragment())) == len(view.contexts) > 0
    state = open_page(path, tmp_path, len(view.contexts))
    check_quiet_and_offline(state)
    assert all(w["rendered"] for w in state["widgets"])
    save_screenshot(state["png"], tmp_path, "show_neuron_saved.png")


def test_repeated_notebook_outputs_render(planted, tmp_path) -> None:
    """Two notebook outputs of the same view on one page (as JupyterLab shows them): each
    carries the bundle, the second copy does not run again, and every widget renders."""
    model, tokens, profile = planted
    view = nk.show_neuron(model, profile, 0, 3, tokens=tokens, k=2)
    output = render.notebook_html(view.fragment(), bundle=True)
    assert output.count("data-nk-bundle") == 1
    path = tmp_path / "notebook.html"
    path.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{output}"
        f"<script>window.nkFirst = window.CircuitsVis</script>{output}</body></html>",
        encoding="utf-8",
    )
    state = open_page(path, tmp_path, 4, "window.nkFirst === window.CircuitsVis")
    check_quiet_and_offline(state)
    assert state["extra"] is True
    assert [w["rendered"] for w in state["widgets"]] == [True] * 4
    assert len({w["id"] for w in state["widgets"]}) == 4


def test_report_renders_offline(planted, tmp_path) -> None:
    model, tokens, profile = planted
    path = report(profile, model, out=tmp_path / "report.html", tokens=tokens)
    text = path.read_text(encoding="utf-8")
    n_widgets = text.count('class="nk-widget"')
    assert text.count("data-nk-bundle") == 1 and n_widgets > 0
    state = open_page(path, tmp_path, n_widgets)
    check_quiet_and_offline(state)
    assert all(w["rendered"] for w in state["widgets"]) and len(state["widgets"]) == n_widgets
    assert state["pwned"] is None
    save_screenshot(state["png"], tmp_path, "report.png")


_VISIBLE = (
    "[...document.querySelectorAll('section.nk-neuron')]"
    ".filter(s => s.getClientRects().length > 0).map(s => s.id)"
)


def test_report_filter_contents_and_width(planted, tmp_path) -> None:
    """The report as a reader uses it: typing a query into the filter box shows exactly the
    sections it names; the contents bar stays at the top and its links land; with every
    <details> open, nothing makes the page wider than the window."""
    model, tokens, profile = planted
    path = report(profile, model, out=tmp_path / "report.html", tokens=tokens, progress=False)
    browser = Chromium(tmp_path / "chromium-profile", tmp_path / "chromium.log")
    try:
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.page(f"{domain}.enable")
        browser.page(
            "Emulation.setDeviceMetricsOverride", width=1000, height=800, deviceScaleFactor=1,
            mobile=False,
        )  # fmt: skip
        browser.page("Page.navigate", url=path.as_uri())
        browser.wait_for("document.readyState === 'complete'")
        browser.wait_for("document.querySelectorAll('.colored-tokens').length > 0")
        sections = browser.evaluate(
            "[...document.querySelectorAll('section.nk-neuron')].map(s => [s.id, "
            "s.dataset.layer, s.dataset.kind, s.dataset.type])"
        )

        def typed(query: str) -> list[str]:
            browser.evaluate("document.getElementById('nk-filter').focus()")
            browser.evaluate("document.getElementById('nk-filter').select()")
            browser.page("Input.insertText", text=query)
            assert browser.evaluate("document.getElementById('nk-filter').value") == query
            return browser.evaluate(_VISIBLE)

        assert browser.evaluate(_VISIBLE) == [s[0] for s in sections]
        layer1 = [s[0] for s in sections if s[1] == "1"]
        assert layer1 and typed("layer:1") == layer1
        count = browser.evaluate("document.getElementById('nk-filter-count').textContent")
        assert count == f"{len(layer1)} of {len(sections)} neurons shown"
        strong = [s[0] for s in sections if s[1] == "0" and s[2] == "positional" and s[3] == "oscillatory"]  # fmt: skip
        assert strong and typed("layer:0 kind:positional type:oscillatory") == strong
        assert typed("neuron:3 layer:1") == ["n-1-3"]
        assert typed("layer:3") == []

        # The contents bar: still at the top halfway down, and a neuron's link lands on it
        # (hidden by the filter, the link clears the filter first).
        browser.evaluate("window.scrollTo(0, document.body.scrollHeight / 2)")
        assert abs(browser.evaluate("document.querySelector('.nk-toc').getBoundingClientRect().top")) < 1  # fmt: skip
        browser.evaluate("document.querySelector('.nk-toc details').open = true")
        browser.evaluate("document.querySelector('.nk-toc a[href=\"#n-1-3\"]').click()")
        time.sleep(0.2)
        top = browser.evaluate("document.getElementById('n-1-3').getBoundingClientRect().top")
        assert 0 <= top < 100
        assert browser.evaluate("document.querySelector('.nk-toc details').open") is False
        assert browser.evaluate(_VISIBLE) == [s[0] for s in sections]

        browser.evaluate("document.querySelectorAll('details').forEach(d => { d.open = true; })")
        time.sleep(0.2)
        wide, window = browser.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert wide <= window
        browser.evaluate("window.scrollTo(0, 0)")
        shot = browser.page("Page.captureScreenshot", format="png")
    finally:
        browser.close()
    check_quiet_and_offline({"events": browser.events})
    save_screenshot(base64.b64decode(shot["data"]), tmp_path, "report_details_open.png")
