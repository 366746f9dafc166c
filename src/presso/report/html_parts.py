"""Small HTML builders the report pages share (escaped text, tables, captioned figures)."""

from __future__ import annotations

import html


def esc(text) -> str:
    return html.escape(str(text))


def table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def figure(chart: str, caption: str) -> str:
    return f"<figure>{chart}<figcaption>{esc(caption[:1].upper() + caption[1:])}</figcaption></figure>"
