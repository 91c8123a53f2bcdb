"""The embedded default corpus, built offline from the running Python's standard library.

Three domains, interleaved deterministically:

- **code**: every ``.py`` file under ``sysconfig.get_paths()["stdlib"]`` (sorted paths), one
  document per non-empty file, except test suites (any directory named ``test``, ``tests`` or
  ``idle_test``), ``site-packages``, ``pydoc_data/topics.py`` (it is the prose below, as one
  string literal) and files that are not valid UTF-8.
- **prose**: the stdlib's own documentation: one document per ``pydoc_data.topics.topics``
  entry (the language reference's topics), and one per module holding its module, class and
  function docstrings, read with ``ast.get_docstring`` from the parsed source (no module is
  imported).
- **arithmetic**: ``N_ARITHMETIC`` question-and-answer pairs in the style of DeepMind
  Mathematics (Saxton et al. 2019), e.g. ``"What is 37 + -12?\\nAnswer: 25"``, drawn with
  ``random.Random(seed)`` (see :mod:`tl_neuronkinds.corpus.arithmetic`).

Within a domain the documents are shuffled with a generator seeded by ``seed``; the domains are
then merged in proportion to their characters, so every prefix of the stream (what
``tokenize(..., n_tokens=N)`` takes) has about the same mixture as the whole.

Split: a document is **held out** iff ``blake2b(key, digest_size=8)``, read as a big-endian
integer, is ``0 mod 20`` (5%), where the key is the stdlib path (``"json/decoder.py"``) for a
module's code and its docstrings alike (so a module's docstrings never leak from the training
split into the held-out one), ``"topic:<name>"`` for a pydoc topic and ``"arithmetic:<i>"``
for the i-th arithmetic problem. The split depends on neither the seed nor the order.

Sizes on CPython 3.11.7, seed 0, counted with OPT's tokenizer (documents encoded one by one
without special tokens; packing adds at most one separator per document on top):

==========  =================  ==================  ==================
domain      documents          characters          OPT tokens
==========  =================  ==================  ==================
code            730  (0.5%)    11,361,369 (55.9%)   5,243,112 (63.7%)
prose           724  (0.5%)     2,538,628 (12.5%)     745,517  (9.1%)
arithmetic  150,000 (99.0%)     6,424,662 (31.6%)   2,242,972 (27.2%)
all         151,454            20,324,659           8,231,601
train       143,886            19,351,361           7,854,829
heldout       7,568               973,298             376,772
==========  =================  ==================  ==================

Other Python versions ship other standard libraries, hence other (similar) sizes.
"""

import ast
import contextlib
import functools
import gc
import hashlib
import heapq
import os
import random
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple, no_type_check

from tl_neuronkinds.corpus.arithmetic import arithmetic_problem

#: Number of generated arithmetic problems (one document each).
N_ARITHMETIC = 150_000
#: One document in ``HELDOUT_MODULUS`` is held out (5%).
HELDOUT_MODULUS = 20
_TEST_DIRS = frozenset({"test", "tests", "idle_test"})
DOMAINS = ("code", "prose", "arithmetic")


class EmbeddedDocument(NamedTuple):
    """One document of the embedded corpus: its domain, split key and text."""

    domain: str
    key: str
    text: str


@no_type_check  # called once per document per split: keep the test suite's checks off it
def is_heldout(key: str) -> bool:
    """Whether the document with this split key belongs to the held-out split (5%)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % HELDOUT_MODULUS == 0


def _stdlib_sources() -> list[tuple[str, str]]:
    """(relative posix path, source) of the stdlib's non-test, UTF-8 ``.py`` files, sorted."""
    root = sysconfig.get_paths()["stdlib"]
    sources = []
    for folder, subfolders, files in os.walk(root):
        rel_folder = Path(folder).relative_to(root)
        subfolders[:] = [
            d
            for d in subfolders
            if d not in _TEST_DIRS
            and d != "__pycache__"
            and (rel_folder.parts or d != "site-packages")
        ]
        for name in files:
            rel = (rel_folder / name).as_posix()
            if not name.endswith(".py") or rel == "pydoc_data/topics.py":
                continue
            try:
                text = Path(folder, name).read_bytes().decode("utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            if text.strip():  # empty __init__.py files are not documents
                sources.append((rel, text))
    sources.sort()
    return sources


def _module_name(rel: str) -> str:
    parts = rel[: -len(".py")].split("/")
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


@no_type_check  # called for every class and function of the stdlib (~10^5 times per build)
def _docstrings(body: list[ast.stmt], prefix: str) -> list[tuple[str, str]]:
    """(qualified name, docstring) of the classes and functions in a statement list.

    Walks statement bodies only (``if``/``try``/``with``/... blocks included), never
    expressions, which keeps this fast.
    """
    found = []
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}.{node.name}"
            doc = ast.get_docstring(node)
            if doc:
                found.append((name, doc))
            found.extend(_docstrings(node.body, name))
            continue
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if isinstance(block, list):
                found.extend(_docstrings(block, prefix))
        for handler in getattr(node, "handlers", []):
            found.extend(_docstrings(handler.body, prefix))
        for case in getattr(node, "cases", []):
            found.extend(_docstrings(case.body, prefix))
    return found


def _module_docs(rel: str, source: str) -> str | None:
    """A module's docstrings as one plain-text document, or None when it has none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            return None
    name = _module_name(rel)
    sections = []
    doc = ast.get_docstring(tree)
    if doc:
        sections.append(f"{name}\n\n{doc}")
    sections.extend(f"{qual}\n\n{text}" for qual, text in _docstrings(tree.body, name))
    return "\n\n\n".join(sections) if sections else None


def _pydoc_topics() -> list[tuple[str, str]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        return []
    return sorted(topics.items())


def _interleave(streams: list[list[EmbeddedDocument]]) -> list[EmbeddedDocument]:
    """Merge the streams so that each prefix holds them in proportion to their characters.

    The next document always comes from the stream that has given the smallest fraction of its
    characters so far (ties: the earlier stream).
    """
    totals = [max(1, sum(len(d.text) for d in s)) for s in streams]
    heap = [(0.0, i, 0, 0) for i, s in enumerate(streams) if s]  # (fraction, stream, next, chars)
    heapq.heapify(heap)
    merged = []
    while heap:
        _, i, taken, done = heapq.heappop(heap)
        doc = streams[i][taken]
        merged.append(doc)
        if taken + 1 < len(streams[i]):
            done += len(doc.text)
            heapq.heappush(heap, (done / totals[i], i, taken + 1, done))
    return merged


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: building creates millions of short-lived objects
    (AST nodes, documents) that would trigger it over and over and double the build time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@functools.lru_cache(maxsize=1)
def _stdlib_documents() -> tuple[tuple[EmbeddedDocument, ...], tuple[EmbeddedDocument, ...]]:
    """The code and prose documents, in sorted-path order (then pydoc topics by name)."""
    code, prose = [], []
    with _gc_paused():
        for rel, source in _stdlib_sources():
            code.append(EmbeddedDocument("code", rel, source))
            docs = _module_docs(rel, source)
            if docs is not None:
                prose.append(EmbeddedDocument("prose", rel, docs))
    prose.extend(EmbeddedDocument("prose", f"topic:{k}", v) for k, v in _pydoc_topics())
    return tuple(code), tuple(prose)


@functools.lru_cache(maxsize=4)
def embedded_documents(seed: int) -> tuple[EmbeddedDocument, ...]:
    """All documents of the embedded corpus for ``seed``, in stream order, both splits.

    Cached in memory per process (the standard library does not change while it runs).
    """
    code, prose = (list(docs) for docs in _stdlib_documents())
    rng = random.Random(seed)
    with _gc_paused():
        arithmetic = [
            EmbeddedDocument("arithmetic", f"arithmetic:{i}", arithmetic_problem(rng))
            for i in range(N_ARITHMETIC)
        ]
    order = random.Random(f"tl_neuronkinds.embedded.order:{seed}")
    order.shuffle(code)
    order.shuffle(prose)
    return tuple(_interleave([code, prose, arithmetic]))


def embedded_split(seed: int, split: str) -> list[EmbeddedDocument]:
    """The documents of one split (``"train"``, ``"heldout"`` or ``"all"``), in stream order."""
    docs = embedded_documents(seed)
    if split == "all":
        return list(docs)
    want_heldout = split == "heldout"
    return [d for d in docs if is_heldout(d.key) == want_heldout]
