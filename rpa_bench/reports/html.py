"""HTML building blocks: sortable tables from DataFrames, sections, jinja2 rendering.

Every value reaches the page through jinja2 with autoescaping on; nothing is marked safe.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable, Mapping, Sequence

import jinja2
import pandas as pd

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("rpa_bench.reports", "templates"),
    autoescape=True,  # every template, whatever its extension
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclasses.dataclass(frozen=True)
class Cell:
    text: str
    sort_key: float | str  # what the header click sorts by
    css: str = ""


@dataclasses.dataclass(frozen=True)
class Table:
    """A table the page renders sortable (click a header)."""

    caption: str
    headers: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    numeric: tuple[bool, ...]  # per column: right-aligned, sorted as numbers


@dataclasses.dataclass(frozen=True)
class Image:
    src: str  # relative to the page
    alt: str


@dataclasses.dataclass(frozen=True)
class Section:
    """One report section; ``omitted`` (a reason) replaces its content when set."""

    id: str
    title: str
    intro: str = ""
    notes: tuple[str, ...] = ()
    images: tuple[Image, ...] = ()
    tables: tuple[Table, ...] = ()
    omitted: str | None = None


def _missing(value) -> bool:
    if value is None or value is pd.NA:
        return True
    try:
        return bool(isinstance(value, float) and math.isnan(value))
    except TypeError:
        return False


def fmt_num(value, digits: int = 3) -> str:
    """Significant digits, thousands separators; an em dash when missing."""
    if _missing(value):
        return "\u2014"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    x = float(value)
    if x == 0:
        return "0"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:,.{max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))}f}"


def fmt_pct(value) -> str:
    return "\u2014" if _missing(value) else f"{float(value):.2f}"


def fmt_text(value) -> str:
    if _missing(value):
        return "\u2014"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return "; ".join(str(v) for v in value) if value else "\u2014"
    return str(value)


Formatter = Callable[[object], str]


@dataclasses.dataclass(frozen=True)
class Column:
    """How one DataFrame column becomes a table column."""

    name: str
    label: str
    fmt: Formatter = fmt_text
    numeric: bool = False
    css: Callable[[object], str] | None = None


def _sort_key(value, numeric: bool):
    if _missing(value):
        return float("inf") if numeric else ""
    if numeric:
        try:
            return float(value)
        except (TypeError, ValueError):
            return float("inf")
    return fmt_text(value)


def table_from_frame(frame: pd.DataFrame, columns: Sequence[Column], caption: str) -> Table:
    cols = [c for c in columns if c.name in frame.columns]
    rows = []
    for _, rec in frame.iterrows():
        rows.append(tuple(
            Cell(c.fmt(rec[c.name]), _sort_key(rec[c.name], c.numeric), c.css(rec[c.name]) if c.css else "")
            for c in cols
        ))
    return Table(caption, tuple(c.label for c in cols), tuple(rows), tuple(c.numeric for c in cols))


def key_value_table(items: Mapping | Sequence[tuple[str, object]], caption: str,
                    headers: tuple[str, str] = ("key", "value")) -> Table:
    pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
    def text(v) -> str:
        return fmt_num(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else fmt_text(v)

    rows = tuple((Cell(str(k), str(k)), Cell(text(v), text(v))) for k, v in pairs)
    return Table(caption, headers, rows, (False, False))


def flatten(data, prefix: str = "") -> list[tuple[str, object]]:
    """Nested dicts/lists as dotted ``(key, scalar)`` pairs, in their order."""
    out: list[tuple[str, object]] = []
    if isinstance(data, Mapping):
        if not data and prefix:
            out.append((prefix, "{}"))
        for key, value in data.items():
            out += flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(data, (list, tuple)) and any(isinstance(v, (Mapping, list, tuple)) for v in data):
        for i, value in enumerate(data):
            out += flatten(value, f"{prefix}[{i}]")
    else:
        out.append((prefix, data))
    return out


def render(template: str, out_path: pathlib.Path, **context) -> pathlib.Path:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(_ENV.get_template(template).render(**context), encoding="utf-8")
    return out_path
