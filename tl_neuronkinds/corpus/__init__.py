"""Corpora and their packing into token rows.

``sources.py`` (the ``Corpus`` class and where documents come from) · ``files.py`` (text
files, folders and globs into documents; binary and non-UTF-8 files in folders skipped) ·
``packing.py`` (documents into full-length rows with BOS first) · ``embedded.py`` (the offline
default corpus) · ``arithmetic.py`` (its generated arithmetic problems).
"""

from tl_neuronkinds.corpus.sources import Corpus

__all__ = ["Corpus"]
