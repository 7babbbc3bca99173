"""index.html of the board: a static page (no external URLs) with per model a bar chart of accuracy by
valence (inline SVG) and a table that sorts on a header click. The page's frame, style and script are
the files in `templates/`."""

from __future__ import annotations

import html
from pathlib import Path
from string import Template

from ..prompts import EMOTIONS, VALENCES
from .cells import cell_pct, ci_text, fluent_raw_pair, pct
from .entry import Entry
from .ordering import grouped

TEMPLATES = Path(__file__).parent / "templates"


VALENCE_COLOURS = {"positive": "#228833", "neutral": "#888888", "negative": "#cc3311"}


def valence_chart_svg(members: list[Entry]) -> str:
    """Grouped bars (positive / neutral / negative per method), as inline SVG: the solid bar is fluent
    accuracy with its 95% interval whisker, the pale bar behind it raw accuracy (a run without fluency
    records has the pale bar alone, whisker on raw accuracy)."""
    bar, gap, left, top, height = 16, 22, 44, 24, 180
    width = max(560, left + len(members) * (3 * bar + gap) + 10)  # at least the legend's width
    y = lambda acc: top + height * (1 - acc)  # noqa: E731
    parts = [
        f'<svg width="{width}" height="{top + height + 58}" role="img" '
        f'aria-label="fluent and raw accuracy by valence per method" font-size="11" font-family="sans-serif">'
    ]
    for tick in (0, 25, 50, 75, 100):
        ty = y(tick / 100)
        parts.append(f'<line x1="{left}" x2="{width - 6}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#e4e4e4"/>')
        parts.append(f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end">{tick}%</text>')
    chance = y(1 / len(EMOTIONS))
    parts.append(
        f'<line x1="{left}" x2="{width - 6}" y1="{chance:.1f}" y2="{chance:.1f}" stroke="#999" stroke-dasharray="4 3"/>'
    )
    for index, entry in enumerate(members):
        x0 = left + gap / 2 + index * (3 * bar + gap)
        for offset, valence in enumerate(VALENCES):
            raw = entry.accuracy["by_valence"].get(valence)
            if not raw:
                continue
            fluent = entry.fluent_group("by_valence", valence)
            x, colour = x0 + offset * bar, VALENCE_COLOURS[valence]
            title = f"{entry.method} {valence}: "
            if fluent:
                title += f"fluent {100 * fluent['acc']:.1f}% (95% CI {ci_text(fluent)}), "
            title += f"raw {100 * raw['acc']:.1f}% (95% CI {ci_text(raw)}), n={raw['n']}"
            parts.append(
                f'<rect x="{x:.1f}" y="{y(raw["acc"]):.1f}" width="{bar - 2}" height="{height * raw["acc"]:.1f}" '
                f'fill="{colour}" fill-opacity="0.3"><title>{html.escape(title)}</title></rect>'
            )
            shown = fluent or raw
            if fluent:
                parts.append(
                    f'<rect x="{x:.1f}" y="{y(fluent["acc"]):.1f}" width="{bar - 2}" '
                    f'height="{height * fluent["acc"]:.1f}" fill="{colour}"><title>{html.escape(title)}</title></rect>'
                )
            low, high = shown["ci95"]
            cx = x + (bar - 2) / 2
            parts.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(high):.1f}" y2="{y(low):.1f}" stroke="#222"/>')
        label = html.escape(entry.method if len(entry.method) <= 14 else entry.method[:13] + "…")
        parts.append(f'<text x="{x0 + 1.5 * bar:.1f}" y="{top + height + 16}" text-anchor="middle">{label}</text>')
    legend_y = top + height + 38
    for offset, valence in enumerate(VALENCES):
        lx = left + offset * 90
        parts.append(f'<rect x="{lx}" y="{legend_y - 9}" width="10" height="10" fill="{VALENCE_COLOURS[valence]}"/>')
        parts.append(f'<text x="{lx + 14}" y="{legend_y}">{valence}</text>')
    parts.append(f'<text x="{left + 280}" y="{legend_y}" fill="#666">solid: fluent, pale: raw; dashed: 1/6</text>')
    parts.append("</svg>")
    return "".join(parts)


def _td(text: str, value=None, cls: str = "") -> str:
    """A body cell showing `text`; `value` (default: the text) is what the sort script compares."""
    value = text if value is None else value
    attr = f' class="{cls}"' if cls else ""
    return f'<td{attr} data-v="{html.escape(str(value), quote=True)}">{text}</td>'


HTML_TEXT_COLUMNS = {"method", "fluent 95% CI", "raw 95% CI", "scorer", "backend", "decoding", "date", "config"}
HTML_TEXT_COLUMNS.add("run dir")  # left-aligned columns


def _th(name: str) -> str:
    """A header cell: text columns left-aligned; "fluent" marked as the order the rows come in."""
    classes = (["t"] if name in HTML_TEXT_COLUMNS else []) + (["sorted-desc"] if name == "fluent" else [])
    attr = f' class="{" ".join(classes)}"' if classes else ""
    return f"<th{attr}>{name}</th>"


PAGE = Template((TEMPLATES / "board.html").read_text(encoding="utf-8"))  # $style, $body and $script
STYLE = (TEMPLATES / "board.css").read_text(encoding="utf-8").strip()
SCRIPT = (TEMPLATES / "board.js").read_text(encoding="utf-8").strip()  # sorts a table on a header click

TABLE_HEAD = ["method", "n", "fluent", "fluent 95% CI", "raw", "raw 95% CI", "fluent replies"]
TABLE_HEAD += [*VALENCES, *EMOTIONS, "scorer", "agreement", "backend", "decoding", "date", "config", "run dir"]


def index_html(entries: list[Entry], refused: list[tuple[str, str]]) -> str:
    body = []
    if not entries:
        body.append("<p>No accepted runs yet.</p>")
    for group, members in grouped(entries):
        model, selection = group
        body.append(f'<h2>{html.escape(model)} <span class="muted">({html.escape(selection)})</span></h2>')
        body.append(valence_chart_svg(members))
        body.append('<table class="sortable"><thead><tr>')
        body.append("".join(_th(h) for h in TABLE_HEAD))
        body.append("</tr></thead><tbody>")
        body += ["<tr>" + "".join(_row_cells(entry)) + "</tr>" for entry in members]
        body.append("</tbody></table>")
    if refused:
        body.append("<h2>Refused</h2><ul>")
        body += [f"<li><code>{html.escape(path)}</code>: {html.escape(reason)}</li>" for path, reason in refused]
        body.append("</ul>")
    return PAGE.substitute(style=STYLE, body="\n".join(body), script=SCRIPT)


def _pair_cell(entry: Entry, block: str, name: str) -> str:
    """A valence or emotion cell: "fluent / raw" shown, sorted by fluent accuracy."""
    cell = entry.fluent_group(block, name)
    return _td(html.escape(fluent_raw_pair(entry, block, name)), "" if cell is None else f"{cell['acc']:.6f}")


def _row_cells(entry: Entry) -> list[str]:
    """One table row's cells, in TABLE_HEAD order."""
    overall, fluent = entry.accuracy["overall"], entry.fluent
    agreement, share = entry.scorer_agreement, entry.fluent_share
    decoding = html.escape(entry.decoding) + (' <span class="own">own</span>' if entry.own_decoding else "")
    return [
        _td(f"<code>{html.escape(entry.method)}</code>", entry.method, "t"),
        _td(str(overall["n"])),
        _td(f"<b>{cell_pct(fluent)}</b>", f"{fluent['acc']:.6f}") if fluent else _td("-", ""),
        _td(ci_text(fluent), f"{fluent['ci95'][0]:.6f}", "t") if fluent else _td("-", "", "t"),
        _td(pct(overall["acc"]), f"{overall['acc']:.6f}"),
        _td(ci_text(overall), f"{overall['ci95'][0]:.6f}", "t"),
        _td(pct(share), "" if share is None else f"{share:.6f}"),
        *(_pair_cell(entry, "by_valence", v) for v in VALENCES),
        *(_pair_cell(entry, "by_emotion", e) for e in EMOTIONS),
        _td(
            f"<code>{html.escape(str(entry.spec['scorer']['id']))}</code> "
            f'<span class="muted">{html.escape(str(entry.spec["scorer"]["sha256"])[:12])}</span>',
            entry.spec["scorer"]["id"],
            "t",
        ),
        _td("-" if agreement is None else f"{agreement:.3f}", "" if agreement is None else f"{agreement:.6f}"),
        _td(
            html.escape(f"{entry.spec['backend']['name']} ({entry.spec['model'].get('dtype', '?')})"),
            entry.spec["backend"]["name"],
            "t",
        ),
        _td(decoding, entry.decoding, "t"),
        _td(entry.date, cls="t"),
        _td(f"<code>{html.escape(entry.config_hash)}</code>", entry.config_hash, "t"),
        _td(f'<a href="{html.escape(entry.path)}/">{html.escape(entry.path)}</a>', entry.path, "t"),
    ]
