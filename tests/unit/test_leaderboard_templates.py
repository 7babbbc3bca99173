"""The board's template files (README header, the HTML page's frame, CSS and JS) ship inside the wheel and
render from an installed package exactly as from the checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile

from locations import REPO

from sev_bench.leaderboard import index_html, readme

TEMPLATES = REPO / "sev_bench" / "leaderboard" / "templates"


def test_the_templates_are_the_ones_the_renderers_read():
    assert sorted(path.name for path in TEMPLATES.iterdir()) == [
        "board.css",
        "board.html",
        "board.js",
        "readme_header.md",
    ]
    page = index_html([], [])
    assert page.startswith("<!DOCTYPE html>") and page.endswith("</body></html>\n")
    assert "$" not in page and "<p>No accepted runs yet.</p>" in page
    assert (TEMPLATES / "board.css").read_text(encoding="utf-8").strip() in page
    assert (TEMPLATES / "board.js").read_text(encoding="utf-8").strip() in page
    assert "{" + "max_new_tokens}" not in readme([], []) and "{" + "sha_list}" not in readme([], [])


def test_the_templates_ship_inside_the_wheel(tmp_path):
    """Build the wheel, unpack it alone on sys.path, and render an empty board from there."""
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip_wheel, "-w", str(tmp_path), str(REPO)], check=True)
    wheel = next(tmp_path.glob("sev_bench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for template in sorted(TEMPLATES.iterdir()):
        assert f"sev_bench/leaderboard/templates/{template.name}" in names
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    probe = (
        "import sys, sev_bench.leaderboard as board; print(board.__file__, file=sys.stderr); "
        "sys.stdout.write(board.readme([], []) + board.index_html([], []))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stderr.strip().startswith(str(unpacked))
    assert result.stdout == readme([], []) + index_html([], [])
