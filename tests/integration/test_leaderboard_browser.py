"""The HTML board in a real browser: headless Chromium (Debian's `chromium` package, found on the machine)
driven by `playwright` through `executable_path` (no `playwright install` download). The committed page
and a freshly built one render their tables and charts, sort on a header click, and log no console errors.

Skipped, with the reason, where playwright or a Chromium binary is missing; `.ci/run` installs both and sets
SEV_BENCH_REQUIRE_BROWSER=1, which turns the skip into a failure there.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from locations import REPO
from synthetic_runs import make_samples, write_run

from sev_bench.leaderboard import build

pytestmark = pytest.mark.browser

CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    """$SEV_BENCH_CHROMIUM, else Debian's binary (behind its /usr/bin/chromium wrapper script), else the first
    Chromium on PATH."""
    chosen = os.environ.get("SEV_BENCH_CHROMIUM")
    if chosen:
        return chosen
    for name in CANDIDATES:
        found = name if os.path.isabs(name) and os.access(name, os.X_OK) else shutil.which(name)
        if found:
            return found
    return None


def _missing(reason: str):
    if os.environ.get("SEV_BENCH_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (SEV_BENCH_REQUIRE_BROWSER=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    if executable is None:
        _missing("no Chromium binary (apt-get install -y chromium, or set SEV_BENCH_CHROMIUM)")
    if not os.access(executable, os.X_OK):
        _missing(f"SEV_BENCH_CHROMIUM={executable} is not an executable file")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield launched
        finally:
            launched.close()


class Page:
    """One loaded page, with every console error and uncaught exception it produced."""

    def __init__(self, browser, path: Path) -> None:
        self.page = browser.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(f"console {m.type}: {m.text}") if m.type == "error" else 0)
        self.page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))
        self.page.goto(path.resolve().as_uri(), wait_until="load")

    def column(self, table: int, name: str) -> list[str]:
        """The texts of one column (by header name) of the `table`-th sortable table, top to bottom."""
        return self.page.evaluate(
            """([t, name]) => {
                const table = document.querySelectorAll("table.sortable")[t];
                const heads = Array.from(table.tHead.rows[0].cells).map(c => c.textContent);
                const i = heads.indexOf(name);
                if (i < 0) throw new Error("no column " + name);
                return Array.from(table.tBodies[0].rows).map(r => r.cells[i].textContent);
            }""",
            [table, name],
        )

    def click_header(self, table: int, name: str) -> None:
        self.page.locator("table.sortable").nth(table).locator("th", has_text=name).first.click()

    def header_class(self, table: int, name: str) -> str:
        header = self.page.locator("table.sortable").nth(table).locator("th", has_text=name).first
        return header.get_attribute("class") or ""


def _numbers(texts: list[str]) -> list[float]:
    return [float("-inf") if text.strip() == "-" else float(text) for text in texts]


def _check_charts(page: Page, expected: int) -> None:
    charts = page.page.locator("svg[role=img]")
    assert charts.count() == expected
    for index in range(expected):
        chart = charts.nth(index)
        assert chart.is_visible()
        box = chart.bounding_box()
        assert box and box["width"] > 300 and box["height"] > 150
        bars = chart.locator("rect[fill-opacity]")  # one pale raw-accuracy bar per method and valence
        assert bars.count() >= 3
        assert any((bars.nth(i).bounding_box() or {}).get("height", 0) > 0 for i in range(bars.count()))
    # every bar has a tooltip naming its figures
    assert "raw" in page.page.locator("svg[role=img] rect title").first.text_content()


def test_committed_board_renders_sorts_and_logs_no_errors(browser):
    page = Page(browser, REPO / "leaderboards" / "index.html")
    tables = page.page.locator("table.sortable")
    assert tables.count() == 3 and all(tables.nth(i).is_visible() for i in range(3))
    _check_charts(page, 3)
    # as built: ranked by fluent accuracy; the runs whose fluency predates the method-neutral gate (the
    # full split's circuit and steering) show "-" and come last, by raw accuracy
    assert page.column(0, "method") == ["prompting", "none", "circuit", "steering"]
    assert "sorted-desc" in page.header_class(0, "fluent")
    fluent = _numbers(page.column(0, "fluent"))
    assert fluent == sorted(fluent, reverse=True) and fluent[-1] == float("-inf")

    page.click_header(0, "raw 95% CI")  # a text column: sorts on its low end, highest first
    page.click_header(0, "raw")
    assert page.column(0, "method") == ["circuit", "steering", "prompting", "none"]
    assert "sorted-desc" in page.header_class(0, "raw") and "sorted" not in page.header_class(0, "fluent")
    page.click_header(0, "raw")  # a second click reverses
    assert page.column(0, "method") == ["none", "prompting", "steering", "circuit"]
    assert "sorted-asc" in page.header_class(0, "raw")
    page.click_header(0, "method")
    assert page.column(0, "method") == sorted(page.column(0, "method"), reverse=True)
    # the other tables did not move (Qwen's four runs predate the neutral gate: ranked by raw accuracy)
    assert page.column(1, "method")[0] == "circuit" and page.column(2, "method")[0] == "prompting"
    assert page.errors == []


def test_built_board_renders_and_sorts_in_chromium(browser, tmp_path):
    root = tmp_path / "board"
    write_run(root / "m" / "none-test", make_samples(lambda i, v, e: e == "happiness"), method="none")
    write_run(root / "m" / "prompting-test", make_samples(lambda i, v, e: i % 2 == 0, lambda i: i % 4 != 0))
    write_run(root / "m" / "loops-test", make_samples(lambda i, v, e: i % 3 != 0, lambda i: i < 4), method="loops")
    build(root)
    page = Page(browser, root / "index.html")
    _check_charts(page, 1)
    assert page.column(0, "method") == ["prompting", "loops", "none"]  # fluent 25.0 > 5.6 > no records
    assert page.column(0, "fluent") == ["25.0", "5.6", "-"]
    page.click_header(0, "raw")
    assert page.column(0, "method") == ["loops", "prompting", "none"]  # raw 66.7 > 50.0 > 16.7
    assert page.errors == []
