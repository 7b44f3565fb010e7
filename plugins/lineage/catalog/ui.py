"""The catalog's pages for a browser, served by every server beside its API:

* ``/ui/lineage/DATASET`` — the lineage graph around a dataset (its absolute path, or its URI
  URL-encoded), drawn as SVG; drag to pan; a run opens its page, a dataset its own graph; below
  the graph, the dataset's schema, recent runs and annotations;
* ``/ui/runs/RUN`` — one step run: what it did and the datasets it read and wrote.

The pages are static shells (no data, no authentication needed to load them): their script asks
the REST API (``/v1/catalog/...``) with the token kept in the tab's sessionStorage (asked for
once, as `runink login` stores it), so what a person sees is what the API lets them read.
"""

from __future__ import annotations

#: what the pages may load and run: their own inline script and style, the API of their origin
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def page(kind: str, target: str) -> str:
    """The page of a dataset's lineage (``kind`` "lineage") or of a run ("run")."""
    import json
    import re
    from html import escape
    from importlib.resources import files

    def literal(value: str) -> str:  # a JS string inside <script>: no "</script>" can end it early
        return json.dumps(value).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")

    template = files("runink.plugins.lineage.catalog").joinpath("page.html").read_text(encoding="utf-8")
    values = {"@TITLE@": escape(target), "@TARGET@": literal(target), "@KIND@": literal(kind)}
    return re.sub("@(TITLE|TARGET|KIND)@", lambda found: values[found.group(0)], template)  # (in one pass)


def dataset_href(uri: str) -> str:
    """A dataset's page, as the SVG links it."""
    from urllib.parse import quote

    return "/ui/lineage/" + quote(uri, safe="")


def run_href(run_id: str) -> str:
    from urllib.parse import quote

    return "/ui/runs/" + quote(run_id, safe="")
