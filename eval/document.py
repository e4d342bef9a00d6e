"""The report as data: sections made of a few kinds of blocks, rendered to Markdown here and to HTML in
eval/html.py. Building blocks instead of Markdown text lets both renderings show the same thing without
a Markdown parser, and lets each section keep the numbers it shows in `data` for report.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Paragraph:
    """Plain text; `code` spans and **bold** are the only inline markup (both renderers know them)."""

    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[Any]]
    caption: str | None = None


@dataclass
class Figure:
    path: Path  # a PNG written next to the report
    caption: str


@dataclass
class Code:
    """Preformatted text (samples, as the model wrote them)."""

    text: str


Block = Paragraph | Table | Figure | Code


@dataclass
class Section:
    """One part of the report. `data` holds every figure the section shows, for report.json."""

    id: str
    title: str
    blocks: list[Block] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def text(self, text: str) -> None:
        self.blocks.append(Paragraph(text))

    def table(self, header: list[str], rows: list[list[Any]], caption: str | None = None) -> None:
        self.blocks.append(Table(header, rows, caption))

    def figure(self, path: Path | None, caption: str) -> None:
        if path is not None:
            self.blocks.append(Figure(Path(path), caption))

    def code(self, text: str) -> None:
        self.blocks.append(Code(text))


def cell(value: Any, digits: int = 4) -> str:
    """One table cell: numbers rounded, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 10**digits else f"{value:.{digits}g}"
    if isinstance(value, int) and abs(value) >= 10**digits:
        return f"{value:,}"
    return str(value)


def _md_cell(value: Any) -> str:
    return cell(value).replace("|", "\\|").replace("\n", "⏎")


def markdown_table(header: list[Any], rows: list[list[Any]]) -> list[str]:
    """The lines of a Markdown table (cells as `cell` writes them, pipes and newlines escaped)."""
    lines = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]


def render_markdown(title: str, sections: list[Section], base: Path) -> str:
    """The report as Markdown; figure paths relative to `base` (the folder report.md is written to)."""
    lines = [f"# {title}", ""]
    lines += ["Contents: " + " · ".join(f"[{section.title}](#{section.id})" for section in sections), ""]
    for section in sections:
        lines += [f'<a id="{section.id}"></a>', f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Paragraph):
                lines += [block.text, ""]
            elif isinstance(block, Table):
                if block.caption:
                    lines += [f"*{block.caption}*", ""]
                lines += [*markdown_table(block.header, block.rows), ""]
            elif isinstance(block, Figure):
                relative = block.path.relative_to(base) if block.path.is_relative_to(base) else block.path
                lines += [f"![{block.caption}]({relative.as_posix()})", "", f"*{block.caption}*", ""]
            elif isinstance(block, Code):
                lines += ["```text", block.text.rstrip("\n"), "```", ""]
    return "\n".join(lines).rstrip() + "\n"
