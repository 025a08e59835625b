"""The web page of ``search_vdr.py serve`` (Gradio): a query box and, for each index side by side (typically the base
and the finetuned model), its top-k pages as thumbnails with document, page and score; a click opens the full page.
A page that only one of the indexes found is marked "only here".

Files: the page images shown are the ones the indexes' rows name, and Gradio serves nothing else: they are the
app's only allowed paths (each file, not its folder), and a request names a file by path only for Gradio's check,
which refuses any other path (tests/search/test_app.py requests one)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vdr.search.searching import Searcher

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls from a local page

#: The marker of a page only one index found (first in its caption, which the gallery may cut short).
ONLY_HERE = "★ only here"


def captions(results: dict[str, list[dict[str, Any]]]) -> dict[str, list[tuple[str, str]]]:
    """Each index's (page file, caption) items: document, page, score, and "only here" for a page that no other
    index returned (pages are the same page when their document and page number are)."""
    found = {name: {(hit["document"], hit["page"]) for hit in hits} for name, hits in results.items()}
    items = {}
    for name, hits in results.items():
        others = set().union(*(pages for other, pages in found.items() if other != name))
        items[name] = [
            (
                hit["page_file"],
                (f"{ONLY_HERE} · " if len(results) > 1 and (hit["document"], hit["page"]) not in others else "")
                + f"{hit['document']} · page {hit['page']} · {hit['score']:.3f}",
            )
            for hit in hits
        ]
    return items


def build_app(searcher: Searcher):
    """The page: a query box, a Search button, and one gallery per index."""
    import gradio as gr

    with gr.Blocks(title="Search your pages") as app:
        gr.Markdown("## Search your pages")
        with gr.Row():
            query = gr.Textbox(label="Query", placeholder="What was the revenue in 2021?", scale=5, elem_id="query")
            button = gr.Button("Search", variant="primary", scale=1, elem_id="search")
        galleries = []
        with gr.Row():
            for number, (name, index) in enumerate(searcher.indexes.items()):
                with gr.Column():
                    settings = index.settings
                    model = "/".join(Path(settings.model).parts[-2:])  # e.g. quickstart/final, not a full path
                    gr.Markdown(f"**{name}**: {model}, dim {settings.dim}, {settings.precision}")
                    galleries.append(
                        gr.Gallery(
                            label=name,
                            columns=2,
                            object_fit="contain",
                            allow_preview=True,
                            buttons=["download", "fullscreen"],  # no "share": nothing leaves this machine
                            elem_id=f"results-{number}",
                        )
                    )

        def run(text: str) -> Any:
            items = captions(searcher.search(text)) if text.strip() else {name: [] for name in searcher.indexes}
            values = [items[name] for name in searcher.indexes]
            return values[0] if len(values) == 1 else values  # Gradio takes one output's value bare

        query.submit(run, query, galleries)
        button.click(run, query, galleries)
    app.page_files = sorted({path for index in searcher.indexes.values() for path in index.page_files()})
    return app


def launch(app, host: str, port: int, block: bool) -> str:
    """Serve ``app`` on ``host:port``; returns its address (with ``block``, only once the server stops)."""
    app.launch(
        server_name=host,
        server_port=port or None,
        allowed_paths=app.page_files,
        prevent_thread_lock=not block,
        quiet=not block,
        show_error=True,
    )
    return app.local_url
