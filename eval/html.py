"""The report as one self-contained HTML file: every figure is embedded as a base64 `data:` URI and the
style sheet is inline, so the file opens from disk in any browser, can be mailed or attached, and never
reaches the network (no scripts, no fonts, no external CSS or images).
"""

from __future__ import annotations

import base64
import html
import re

from eval.document import Code, Figure, Paragraph, Section, Table, cell

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { border-bottom: 1px solid #bbb; margin-top: 2em; }
nav { display: flex; flex-wrap: wrap; gap: .2em .9em; }
nav a { white-space: nowrap; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: 90%; }
th, td { border: 1px solid #ccc; padding: .25em .55em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption, .caption { color: #555; font-size: 90%; font-style: italic; }
pre { background: #f6f6f6; padding: .6em; overflow-x: auto; font-size: 85%; }
code { background: #f3f3f3; padding: 0 .2em; }
"""

_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")


def inline(text: str) -> str:
    """Escape `text` and turn `code` spans and **bold** into their tags (the only inline markup used)."""
    out, last = [], 0
    for match in _INLINE.finditer(text):
        out.append(html.escape(text[last : match.start()]))
        if match.group(1) is not None:
            out.append(f"<code>{html.escape(match.group(1))}</code>")
        else:
            out.append(f"<b>{html.escape(match.group(2))}</b>")
        last = match.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(block: Table) -> str:
    parts = ['<div class="wide"><table>']
    if block.caption:
        parts.append(f'<caption class="caption">{inline(block.caption)}</caption>')
    parts.append("<tr>" + "".join(f"<th>{inline(str(h))}</th>" for h in block.header) + "</tr>")
    for row in block.rows:
        cells = []
        for value in row:
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            text = html.escape(cell(value)).replace("\n", "<br>")
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table></div>")
    return "\n".join(parts)


def render_html(title: str, sections: list[Section]) -> str:
    """The whole report as one HTML string with every figure inlined."""
    body = [f"<h1>{html.escape(title)}</h1>"]
    body.append("<nav>" + "".join(f'<a href="#{s.id}">{html.escape(s.title)}</a>' for s in sections) + "</nav>")
    for section in sections:
        body.append(f'<section id="{section.id}"><h2>{html.escape(section.title)}</h2>')
        for block in section.blocks:
            if isinstance(block, Paragraph):
                body.append(f"<p>{inline(block.text)}</p>")
            elif isinstance(block, Table):
                body.append(_table(block))
            elif isinstance(block, Figure):
                body.append(
                    f'<figure><img alt="{html.escape(block.caption, quote=True)}" '
                    f'src="{data_uri(block.path.read_bytes())}">'
                    f"<figcaption>{inline(block.caption)}</figcaption></figure>"
                )
            elif isinstance(block, Code):
                body.append(f"<pre>{html.escape(block.text)}</pre>")
        body.append("</section>")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
