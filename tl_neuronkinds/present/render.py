"""Offline HTML for circuitsvis widgets: one JavaScript bundle per page, nothing fetched.

circuitsvis's own ``RenderedHTML`` probes google.com in ``_repr_html_`` and points ``str()`` at
a CDN, and a page must work offline: this module never calls either. It inlines the bundle that
the circuitsvis package ships (``circuitsvis/dist/cdn/iife.js``, which defines the global
``CircuitsVis``) and calls ``CircuitsVis.render(id, CircuitsVis.<Component>, props)`` itself,
as circuitsvis's ``render_local`` does:

- ``bundle_script()``: the bundle in one ``<script>``, made safe to inline (no ``</script``
  or ``<!--`` left in it, its source-map comment removed so no browser asks for the map).
  It runs only where ``window.CircuitsVis`` is not yet defined.
- ``widget(component, props)``: a ``<div>`` and a small ``<script>`` that renders the
  component into it from JSON props. Nothing in the props can end the script: the JSON is
  ASCII with ``<``, ``>`` and ``&`` written as ``\\u003c``-style escapes (so U+2028/2029 and
  right-to-left marks are escapes too). circuitsvis writes the strings of a ``tokens`` prop as
  HTML (React's ``dangerouslySetInnerHTML``), so ``widget`` HTML-escapes them first and makes
  invisible characters visible (``visible``): a token ``<img onerror=...>`` shows as that text.
  (circuitsvis's hover tooltip writes the same string as text, so there a token holding ``<``
  or ``&`` shows its escape, ``&lt;``.) The div's id is a hash of the widget's content,
  so the same input gives the same HTML; at render time the script appends a page-wide
  counter to it, so two identical widgets on one page (or in one notebook) stay distinct.
- ``page(title, fragments)``: a complete HTML document with the bundle once, however many
  widgets, and a Content-Security-Policy that forbids any request (scripts, styles, images,
  fonts, connections) to anywhere: nothing leaves the file even if something tried;
  ``section_page(title, section, out)`` writes one such page of figures and tables (no
  widgets), atomically.

Notebooks: an object's ``_repr_html_`` (``NeuronView``) returns ``notebook_html(fragment)``.
The first view of a kernel session carries the bundle (1.3 MB) and every later one only
references it (the fragment and the stylesheet: tens of kB), so a notebook carries one copy
however many neurons it shows. A widget whose script runs before the bundle is defined (an
output re-rendered before the first one, as a reopened or exported notebook may do) queues
itself on ``window.nkPending``, which the bundle's script renders once it has run: no network,
ever. This rests on outputs sharing one page (JupyterLab, the classic notebook, VS Code, an
nbconvert HTML export); where each output has its own frame (Colab) every view carries its
copy, as it does after ``init_notebook(every_view=True)`` (``views.init_notebook``).

"Sent" is remembered per kernel: re-running the cell whose output carried the bundle sends it
again (JupyterLab and Notebook 7 say which cell runs; that output is being replaced), but a
notebook whose first output was cleared or deleted by hand keeps its later views without a
bundle once saved. ``init_notebook()`` in the first cell (it displays the bundle, whatever was
sent before) or a restart and "run all" makes it whole again; ``NeuronView.save`` writes a page
that needs no notebook.
"""

import functools
import hashlib
import html
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tl_neuronkinds.atomic import atomic_write_text
from tl_neuronkinds.errors import NeuronKindsError

#: The policy every page carries: inline scripts and styles, data: images; no request at all.
CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; font-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'"
)
#: The stylesheet of tl_neuronkinds's views (class names start with ``nk-``).
CSS = """
.nk-view{font-family:system-ui,sans-serif;font-size:14px;color:#222;max-width:1100px}
.nk-view h2{font-size:18px;margin:18px 0 6px}.nk-view h3{font-size:15px;margin:14px 0 4px}
.nk-view table{border-collapse:collapse;margin:4px 0}
.nk-view th,.nk-view td{border:1px solid #ddd;padding:2px 8px;text-align:left;
vertical-align:top}
.nk-view th{background:#f4f4f4}.nk-view .nk-num{text-align:right;font-variant-numeric:tabular-nums}
.nk-tok{font-family:ui-monospace,monospace;white-space:pre;background:#eef;border-radius:3px;
padding:0 2px}
.nk-note{color:#666;font-style:italic}.nk-row{display:flex;gap:24px;flex-wrap:wrap}
.nk-widget{margin:2px 0}.nk-ctx td{vertical-align:middle}
"""
_COMPONENT = re.compile(r"[A-Z][A-Za-z0-9]*")
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"}
_KEEP = {"\n", "\t"}
_INVISIBLE = {"Cc", "Cf", "Cs", "Zl", "Zp"}
_NUMBER = re.compile(r"-?[\d,.]+%?")


def _bundle_path() -> Path:
    spec = importlib.util.find_spec("circuitsvis")
    if spec is None or spec.origin is None:
        raise NeuronKindsError("circuitsvis is not installed (pip install circuitsvis)")
    path = Path(spec.origin).parent / "dist" / "cdn" / "iife.js"
    if not path.is_file():
        raise NeuronKindsError(f"circuitsvis's JavaScript bundle is missing: {path}")
    return path


def inline_js(code: str) -> str:
    """JavaScript made safe inside an HTML ``<script>``: ``</script`` (any case) becomes
    ``<\\/script`` and ``<!--`` becomes ``<\\!--``, escapes that mean the same text in the
    string, template and regular-expression literals and comments where a bundle holds them."""
    code = re.sub(r"</(script)", r"<\\/\1", code, flags=re.IGNORECASE)
    return code.replace("<!--", "<\\!--")


@functools.cache
def _bundle() -> str:
    code = _bundle_path().read_text(encoding="utf-8")
    code = re.sub(r"\n//# sourceMappingURL=\S*\s*$", "\n", code)
    return inline_js(code)


def bundle_script() -> str:
    """circuitsvis's bundle in one ``<script>`` that defines ``window.CircuitsVis`` once, then
    renders the widgets queued on ``window.nkPending`` before it ran."""
    version = importlib.metadata.version("circuitsvis")
    return (
        f'<script data-nk-bundle="circuitsvis {html.escape(version)}">'
        f"if(!window.CircuitsVis){{(function(){{{_bundle()}\nwindow.CircuitsVis=CircuitsVis;}})()}}"
        "(window.nkPending||[]).splice(0).forEach(function(r){r()})</script>"
    )


def visible(text: str, *, breaks: bool = True) -> str:
    """``text`` with invisible characters written out: controls, format characters (zero-width
    spaces, right-to-left and other bidirectional marks), line and paragraph separators and lone
    surrogates become ``⟨U+202E⟩``. Newlines and tabs are kept where ``breaks``, else shown as
    ``↵`` and ``⇥`` (for one-line cells)."""
    out = []
    for char in text:
        if breaks and char in _KEEP:
            out.append(char)
        elif char == "\n":
            out.append("↵")
        elif char == "\t":
            out.append("⇥")
        elif unicodedata.category(char) in _INVISIBLE:
            out.append(f"⟨U+{ord(char):04X}⟩")
        else:
            out.append(char)
    return "".join(out)


def token_html(token: str, *, breaks: bool = False) -> str:
    """A token string as HTML text: ``visible`` and escaped (quotes too, for attributes)."""
    return html.escape(visible(token, breaks=breaks), quote=True)


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist"):  # torch tensors
        return value.tolist()
    raise NeuronKindsError(f"widget props must be JSON data, got {type(value).__name__}")


def _escape_tokens(value: Any) -> Any:
    if isinstance(value, str):
        return html.escape(visible(value), quote=False)
    if isinstance(value, list | tuple):
        return [_escape_tokens(v) for v in value]
    return value


def props_json(props: dict[str, Any]) -> str:
    """``props`` as a JSON object that is safe inside a ``<script>`` (see the module)."""
    props = {k: _escape_tokens(v) if k == "tokens" else v for k, v in props.items()}
    try:
        text = json.dumps(
            props, ensure_ascii=True, allow_nan=False, sort_keys=True, separators=(",", ":"),
            default=_plain,
        )  # fmt: skip
    except ValueError as err:
        raise NeuronKindsError(f"widget props hold a value JSON cannot carry: {err}") from err
    return re.sub(r"[<>&]", lambda m: _JSON_ESCAPES[m.group()], text)


def widget(component: str, props: dict[str, Any], fallback: str = "") -> str:
    """An HTML fragment that renders the circuitsvis ``component`` with ``props``.

    Args:
        component: A component of the circuitsvis bundle (``ColoredTokens``,
            ``TextNeuronActivations``, ``TopkTokens``, ...), as its JavaScript name.
        props: Its props, as circuitsvis's JavaScript names them (``minValue``, not
            ``min_value``); numpy arrays and tensors are turned into lists. NaN is refused.
        fallback: HTML shown until the component renders (and where scripts do not run, as
            in an untrusted notebook). The caller escapes it.

    Returns:
        A ``<div>`` and a ``<script>`` that renders it once ``bundle_script()`` has run, before
        it (``page``) or after it (a notebook output shown before the one with the bundle).

    Raises:
        NeuronKindsError: The component name is not a JavaScript identifier, or a prop is not
            JSON data.
    """
    if not _COMPONENT.fullmatch(component):
        raise NeuronKindsError(f"not a circuitsvis component name: {component!r}")
    data = props_json(props)
    digest = hashlib.sha256(f"{component}\0{data}\0{fallback}".encode()).hexdigest()[:16]
    uid = f"nk-cv-{digest}"
    script = (
        f'(function(){{var w=window,e=document.getElementById("{uid}");if(!e)return;'
        f'e.id="{uid}-"+(w.nkWidgetCount=(w.nkWidgetCount||0)+1);'
        f'var r=function(){{var C=w.CircuitsVis["{component}"];'
        f"if(C&&e.isConnected)w.CircuitsVis.render(e.id,C,{data})}};"
        "w.CircuitsVis?r():(w.nkPending=w.nkPending||[]).push(r)})();"
    )
    return f'<div id="{uid}" class="nk-widget">{fallback}</div><script>{script}</script>'


def page(title: str, fragments: Iterable[str], *, widgets: bool = True) -> str:
    """A complete, self-contained HTML document: ``fragments`` in order, the circuitsvis bundle
    once (where ``widgets``: a page of figures and tables only needs none), the views'
    stylesheet, and a Content-Security-Policy that allows no request.

    Raises:
        NeuronKindsError: A fragment carries the bundle itself (a notebook output,
            ``_repr_html_()``, rather than ``fragment()``).
    """
    parts = list(fragments)
    if any("data-nk-bundle" in part for part in parts):
        raise NeuronKindsError(
            "a fragment given to page() carries the circuitsvis bundle: pass view.fragment(), "
            "not view._repr_html_() (the page adds the bundle once)"
        )
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n"
        f"{bundle_script() if widgets else ''}\n"
        f"</head><body>\n{body}\n</body></html>\n"
    )


@dataclass
class _Notebook:
    """What this kernel sent: ``every_view`` (each output carries the bundle) and ``sent``, the
    (cell id, request id) of the output that carried it last (None before the first)."""

    every_view: bool = False
    sent: tuple[str | None, str | None] | None = None


_NOTEBOOK = _Notebook()
#: Front-ends that show each output in its own frame, where no output can use another's bundle.
_FRAMED = ("google.colab",)


def _request() -> tuple[str | None, str | None]:
    """The notebook cell being run (its id where the front-end sends one, as JupyterLab and
    Notebook 7 do) and the kernel's request id; (None, None) outside a kernel."""
    ipython = sys.modules.get("IPython")
    kernel = getattr(ipython.get_ipython(), "kernel", None) if ipython is not None else None
    if kernel is None or not hasattr(kernel, "get_parent"):
        return None, None
    parent = kernel.get_parent() or {}
    cell = (parent.get("metadata") or {}).get("cellId")
    request = (parent.get("header") or {}).get("msg_id")
    return (str(cell) if cell else None), (str(request) if request else None)


def _needs_bundle() -> bool:
    """Whether a view shown now carries the bundle: the first of the kernel, every one where
    outputs do not share a page, and the first of a re-run of the cell that carried it."""
    if _NOTEBOOK.every_view or _NOTEBOOK.sent is None or any(m in sys.modules for m in _FRAMED):
        return True
    cell, request = _request()
    sent_cell, sent_request = _NOTEBOOK.sent
    return cell is not None and cell == sent_cell and request != sent_request


def notebook_mode(*, every_view: bool) -> None:
    """Whether every later notebook output carries its own copy of the bundle (``every_view``)
    or only the first (the default; see the module docstring)."""
    _NOTEBOOK.every_view = every_view


def notebook_html(fragment: str, *, bundle: bool | None = None) -> str:
    """``fragment`` as a notebook output: the stylesheet, the bundle where ``bundle`` (by
    default where this kernel has not sent it yet, see the module docstring), the fragment."""
    if bundle is None:
        bundle = _needs_bundle()
    if bundle:
        _NOTEBOOK.sent = _request()
    return f"<style>{CSS}</style>{bundle_script() if bundle else ''}{fragment}"


def token_span(token: str) -> str:
    """A token string as a boxed, monospaced HTML span (``token_html``; spaces kept)."""
    return f'<span class="nk-tok">{token_html(token)}</span>'


def html_table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """An HTML table of cells that are already HTML (numbers right-aligned; no header row
    where ``head`` is empty)."""
    th = f"<tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>" if head else ""
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=nk-num' if _NUMBER.fullmatch(c) else ''}>{c}</td>" for c in row)
        + "</tr>"
        for row in rows
    )
    return f'<table class="{cls}">{th}{body}</table>'


def section_page(title: str, section: str, out: str | os.PathLike) -> Path:
    """A report section (figures and tables, no widgets) as a self-contained HTML page at
    ``out``, written atomically (``tl-neuronkinds massive`` and ``universal``)."""
    body = ['<div class="nk-view nk-report">', f"<h1>{html.escape(title)}</h1>", section, "</div>"]
    return atomic_write_text(out, page(title, body, widgets=False))
