"""mkdocs hook: the zoo page's artefact table, written from the artefacts' own cards at build time.

The marker ``<!-- zoo-cards -->`` in a page is replaced by one row per artefact of the registry: its
kind, what it is, and the headline metrics of its card (`gremlinkit.zoo.cards.headline`). Cached
artefacts (built by `make organisms` or `make real-organisms`) show their card only where they are
built; elsewhere the row says how to build them. So the page cannot drift from the cards.
"""

from __future__ import annotations

MARKER = "<!-- zoo-cards -->"


def zoo_table() -> str:
    from gremlinkit.zoo import cards, registry

    rows = ["| artefact | kind | what it is | headline metrics (from its card) |", "| --- | --- | --- | --- |"]
    for name, art in registry.ARTEFACTS.items():
        card = cards.card(name)
        if card:
            metrics = ", ".join(f"{k} {v:g}" for k, v in cards.headline(card).items()) or "see its card"
        else:
            metrics = f"not built where these pages were built: {registry.build_hint(name)}"
        where = "cached" if art.cached else "shipped"
        rows.append(f"| `{name}` | {art.kind}, {where} | {art.description} | {metrics} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    return markdown.replace(MARKER, zoo_table()) if MARKER in markdown else markdown
