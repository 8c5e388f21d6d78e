"""Griffe extension for the API reference: the package's docstrings use reStructuredText roles and tables, which
mkdocstrings (Markdown) would print verbatim.

* ``:func:`~pkg.mod.name``` (and ``:mod:``, ``:class:``, ``:meth:``, ``:data:``, ``:attr:``) becomes an optional
  cross-reference: a link when the target has a page in the reference, plain code otherwise (never a broken link).
* A simple reST table (rows framed by ``====  ====`` rules) becomes a Markdown table.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:mod|func|class|meth|data|attr|obj|exc):`(~?)([\w.]+)`")
RULE = re.compile(r"^(\s*)(=+)(\s+=+)+\s*$")


def _role(m: re.Match) -> str:
    short, target = m.group(1), m.group(2)
    title = target.rsplit(".", 1)[-1] if short else target
    return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'


def _columns(rule: str) -> list[tuple[int, int]]:
    return [(m.start(), m.end()) for m in re.finditer(r"=+", rule)]


def _cells(line: str, cols: list[tuple[int, int]]) -> list[str]:
    starts = [a for a, _ in cols] + [len(line) + 1]
    return [line[starts[i] : starts[i + 1]].strip() for i in range(len(cols))]


def _tables(text: str) -> str:
    """Simple reST tables (rule, header, rule, rows, rule) -> Markdown tables."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        m = RULE.match(lines[i])
        if m and i + 2 < len(lines) and RULE.match(lines[i + 2]):
            cols, indent = _columns(lines[i]), m.group(1)
            header = _cells(lines[i + 1], cols)
            j, rows = i + 3, []
            while j < len(lines) and not RULE.match(lines[j]):
                rows.append(_cells(lines[j], cols))
                j += 1
            out += [indent + "| " + " | ".join(header) + " |", indent + "|" + " --- |" * len(cols)]
            out += [indent + "| " + " | ".join(r) + " |" for r in rows]
            i = j + 1
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def convert(text: str) -> str:
    """The Markdown that mkdocstrings should render for a docstring written with reST roles and tables."""
    return ROLE.sub(_role, _tables(text))


class RstRoles(griffe.Extension):
    """Rewrites every docstring of the loaded package once its object tree is complete."""

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
