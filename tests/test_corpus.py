"""Corpus sources, bad input, packing into BOS-led rows, sharding and the embedded corpus."""

import hashlib
import json
import math
import os
import re
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from tl_neuronkinds.corpus import Corpus
from tl_neuronkinds.corpus import embedded as embedded_corpus
from tl_neuronkinds.corpus.embedded import embedded_documents, is_heldout
from tl_neuronkinds.errors import NeuronKindsError

BOS, SEP = 0, 2  # the byte tokenizer's <s> and </s>: distinct, so separators are visible


@pytest.fixture(scope="module")
def byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte (id = 4 + position in the byte alphabet), BOS ``<s>`` 0, EOS ``</s>`` 2."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=64,
    )


def expected_text_stream(tokenizer, docs: list[str], width: int) -> list[int]:
    """The documented packing, written out plainly: docs joined by separators, except before
    a document that starts at a row's first text position."""
    stream: list[int] = []
    for doc in docs:
        if len(stream) % width:
            stream.append(tokenizer.eos_token_id)
        stream.extend(
            tokenizer(doc, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        )
    return stream


# ----------------------------------------------------------------------------- sources


def test_from_texts_skips_and_counts_empty_documents():
    corpus = Corpus.from_texts(["alpha", "", "  \n\t", "beta"])
    assert list(corpus) == ["alpha", "beta"]
    assert len(corpus) == 2
    assert corpus.n_empty_skipped == 2
    assert corpus.description == "texts(n=4)"


@pytest.mark.parametrize("texts", [[], ["", " ", "\n"]])
def test_empty_corpus_is_an_error(texts):
    with pytest.raises(NeuronKindsError, match="empty"):
        Corpus.from_texts(texts)


def test_non_string_document_is_an_error():
    with pytest.raises(NeuronKindsError, match="document 1 is a int"):
        Corpus.from_texts(["a", 3])


def test_from_files_reads_files_folders_and_globs(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "b.txt").write_text("bee", encoding="utf-8")
    (tmp_path / "docs" / "a.md").write_text("\ufeffay", encoding="utf-8")  # BOM dropped
    (tmp_path / "docs" / "sub" / "c.txt").write_text("sea", encoding="utf-8")
    (tmp_path / "docs" / "sub" / "empty.txt").write_text("  ", encoding="utf-8")
    (tmp_path / "docs" / ".hidden").write_text("not read", encoding="utf-8")
    (tmp_path / "one.txt").write_text("one", encoding="utf-8")

    folder = Corpus.from_files(tmp_path / "docs")
    assert list(folder) == ["ay", "bee", "sea"]  # sorted, recursive, hidden skipped
    assert folder.n_empty_skipped == 1

    mixed = Corpus.from_files([str(tmp_path / "one.txt"), str(tmp_path / "docs/**/*.txt")])
    assert list(mixed) == ["one", "bee", "sea"]
    assert mixed.n_empty_skipped == 1 and "; 4 files)" in mixed.description

    twice = Corpus.from_files([tmp_path / "one.txt", tmp_path / "*.txt"])
    assert list(twice) == ["one"]  # a file named twice is read once

    only_md = Corpus.from_files(tmp_path / "docs", suffixes=[".md"])
    assert list(only_md) == ["ay"]


def test_from_files_errors_name_the_path(tmp_path):
    with pytest.raises(NeuronKindsError, match="no_such_file.txt: no such file"):
        Corpus.from_files(tmp_path / "no_such_file.txt")
    with pytest.raises(NeuronKindsError, match=r"glob .*\*\.nothing.* matches no file"):
        Corpus.from_files(str(tmp_path / "*.nothing"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(NeuronKindsError, match="empty_dir holds no files"):
        Corpus.from_files(tmp_path / "empty_dir")
    with pytest.raises(NeuronKindsError, match="no paths"):
        Corpus.from_files([])
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\u00e9".encode("latin-1"))
    with pytest.raises(NeuronKindsError, match=r"latin1\.txt: not valid UTF-8"):
        Corpus.from_files(bad)  # a file named explicitly must be text
    with pytest.raises(NeuronKindsError, match=r"glob .* holds no text file: 1 skipped .*latin1"):
        Corpus.from_files([tmp_path / "*.txt"])


def _mixed_folder(root: Path) -> Path:
    """A folder of two text files and three that are not text: gzip, PNG-like, latin-1."""
    import gzip

    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha", encoding="utf-8")
    (root / "sub" / "b.md").write_text("beta", encoding="utf-8")
    (root / "c.txt.gz").write_bytes(gzip.compress(b"gamma" * 100, mtime=0))
    (root / "d.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))
    (root / "sub" / "e.txt").write_bytes("caf\u00e9 cr\u00e8me".encode("latin-1"))
    return root


def test_folders_skip_binary_and_undecodable_files(tmp_path):
    docs = _mixed_folder(tmp_path / "docs")
    corpus = Corpus.from_files(docs)
    assert list(corpus) == ["alpha", "beta"]
    assert [p.relative_to(docs).as_posix() for p in corpus.skipped] == [
        "c.txt.gz",
        "d.png",
        "sub/e.txt",
    ]
    assert "2 files; 3 skipped as not text: 2 binary, 1 not UTF-8)" in corpus.description
    assert "files_skipped=3" in repr(corpus)
    assert corpus.shard(0, 2).skipped == corpus.skipped  # a shard keeps the record
    assert Corpus.from_texts(["x"]).skipped == ()
    # A glob entry finds files too: those that are not text are skipped the same way.
    by_glob = Corpus.from_files(str(docs / "**" / "*"))
    assert list(by_glob) == ["alpha", "beta"] and len(by_glob.skipped) == 3
    # Named explicitly, a file that is not text is an error naming it.
    with pytest.raises(NeuronKindsError, match=r"d\.png: a binary file"):
        Corpus.from_files([docs, docs / "d.png"])
    with pytest.raises(NeuronKindsError, match=r"e\.txt: not valid UTF-8 text"):
        Corpus.from_files(docs / "sub" / "e.txt")


def test_a_folder_with_no_text_file_is_an_error_naming_what_was_skipped(tmp_path):
    docs = _mixed_folder(tmp_path / "docs")
    for name in ("a.txt", "sub/b.md"):
        (docs / name).unlink()
    message = r"folder .*docs holds no text file: 3 skipped as not text: 2 binary, 1 not UTF-8"
    with pytest.raises(NeuronKindsError, match=message + r" \(c\.txt\.gz, d\.png, e\.txt\)"):
        Corpus.from_files(docs)
    # Another entry with text does not excuse it: each folder must hold some.
    (tmp_path / "ok.txt").write_text("ok", encoding="utf-8")
    with pytest.raises(NeuronKindsError, match="holds no text file"):
        Corpus.from_files([tmp_path / "ok.txt", docs])


@pytest.mark.parametrize(
    ("glob", "suffixes", "expected"),
    [
        ("*.md", None, ["beta"]),  # no "/": the name, at any depth
        ("**/*.md", None, ["beta"]),  # "**" spans any number of levels, none included
        ("**/*.txt", None, ["alpha"]),
        ("sub/*", None, ["beta"]),  # one level: sub/e.txt is not text, so skipped
        ("*.t?t", None, ["alpha"]),
        ("[ab].*", None, ["alpha", "beta"]),
        ("*", [".md", ".txt"], ["alpha", "beta"]),
        ("sub/**", [".txt"], []),  # only sub/e.txt: skipped, so the folder holds no text
    ],
)
def test_glob_and_suffixes_choose_files_in_folders(tmp_path, glob, suffixes, expected):
    docs = _mixed_folder(tmp_path / "docs")
    if not expected:
        with pytest.raises(NeuronKindsError, match="holds no text file"):
            Corpus.from_files(docs, suffixes=suffixes, glob=glob)
        return
    corpus = Corpus.from_files(docs, suffixes=suffixes, glob=glob)
    assert list(corpus) == expected
    assert all(p.name not in {"a.txt", "b.md"} for p in corpus.skipped)


def test_glob_and_suffixes_leave_named_files_alone_and_bad_globs_are_errors(tmp_path):
    docs = _mixed_folder(tmp_path / "docs")
    corpus = Corpus.from_files([docs / "a.txt", docs], glob="*.md")
    assert list(corpus) == ["alpha", "beta"] and corpus.skipped == ()
    with pytest.raises(NeuronKindsError, match=r"holds no files matching glob '\*\.rst' to read"):
        Corpus.from_files(docs, glob="*.rst")
    with pytest.raises(NeuronKindsError, match=r"matching suffixes \['\.rst'\] and glob"):
        Corpus.from_files(docs, suffixes=[".rst"], glob="*")
    for bad in ("", "/abs/*.md"):
        with pytest.raises(NeuronKindsError, match="glob must be a pattern relative"):
            Corpus.from_files(docs, glob=bad)


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_from_jsonl_reads_the_field(tmp_path):
    path = _write_lines(
        tmp_path / "data.jsonl",
        [json.dumps({"text": "first", "id": 1}), "", json.dumps({"text": ""}), '{"text": "é"}'],
    )
    corpus = Corpus.from_jsonl(path)
    assert list(corpus) == ["first", "é"]
    assert corpus.n_empty_skipped == 1
    assert corpus.description == f"jsonl({path}, field=text)"
    other = _write_lines(tmp_path / "other.jsonl", [json.dumps({"body": "x"})])
    assert list(Corpus.from_jsonl(other, field="body")) == ["x"]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"text": "unterminated', "not valid JSON"),
        (json.dumps({"body": "no text field"}), "no field 'text'"),
        (json.dumps(["a", "list"]), "no field 'text'"),
        (json.dumps({"text": 5}), "field 'text' is a int"),
    ],
)
def test_from_jsonl_errors_name_file_and_line(tmp_path, bad_line, message):
    path = _write_lines(tmp_path / "bad.jsonl", ['{"text": "ok"}', "", bad_line])
    with pytest.raises(NeuronKindsError, match=re.escape(f"{path}:3: {message}")):
        Corpus.from_jsonl(path)


def test_from_jsonl_invalid_utf8_and_missing_file(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(NeuronKindsError, match=re.escape(f"{path}:2: not valid UTF-8")):
        Corpus.from_jsonl(path)
    with pytest.raises(NeuronKindsError, match="missing.jsonl: no such JSON Lines file"):
        Corpus.from_jsonl(tmp_path / "missing.jsonl")


def test_from_hf_reads_a_saved_dataset(tmp_path):
    datasets = pytest.importorskip("datasets", reason="the optional `datasets` is not installed")
    datasets.Dataset.from_dict({"text": ["one", "", "three"], "n": [1, 2, 3]}).save_to_disk(
        str(tmp_path / "single")
    )
    corpus = Corpus.from_hf(str(tmp_path / "single"))
    assert list(corpus) == ["one", "three"] and corpus.n_empty_skipped == 1
    assert list(Corpus.from_hf(str(tmp_path / "single"), max_documents=1)) == ["one"]
    with pytest.raises(NeuronKindsError, match="no field 'body'"):
        Corpus.from_hf(str(tmp_path / "single"), field="body")

    splits = datasets.DatasetDict(
        {"validation": datasets.Dataset.from_dict({"body": ["held", "out"]})}
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    corpus = Corpus.from_hf(str(tmp_path / "dict"), split="validation", field="body")
    assert list(corpus) == ["held", "out"]
    assert corpus.description == f"hf({tmp_path / 'dict'}, split=validation, field=body)"
    with pytest.raises(NeuronKindsError, match="no split 'train'"):
        Corpus.from_hf(str(tmp_path / "dict"))


def test_from_hf_unknown_dataset_offline_is_a_clear_error():
    pytest.importorskip("datasets", reason="the optional `datasets` is not installed")
    assert os.environ["HF_DATASETS_OFFLINE"] == "1"  # conftest: this never reaches the network
    with pytest.raises(NeuronKindsError, match="cannot load dataset 'no-such-user/no-such-set'"):
        Corpus.from_hf("no-such-user/no-such-set")


# ----------------------------------------------------------------------------- packing


def test_packing_rule_by_hand(byte_tokenizer):
    # seq_len 3: BOS plus two bytes. "ab" fills row 0; "cd" starts row 1 without a separator;
    # "e" starts row 2; "fgh" follows "e" after a separator; "h" is a partial row, dropped.
    rows = Corpus.from_texts(["ab", "cd", "e", "fgh"]).tokenize(byte_tokenizer, seq_len=3)
    ids = {c: byte_tokenizer.convert_tokens_to_ids(c) for c in "abcdefg"}
    assert rows.tolist() == [
        [BOS, ids["a"], ids["b"]],
        [BOS, ids["c"], ids["d"]],
        [BOS, ids["e"], SEP],
        [BOS, ids["f"], ids["g"]],
    ]
    assert rows.dtype == torch.long


@settings(max_examples=60, deadline=None)
@given(
    docs=st.lists(st.text(min_size=0, max_size=30), min_size=1, max_size=12),
    seq_len=st.integers(min_value=2, max_value=12),
)
def test_rows_are_the_document_stream(byte_tokenizer, docs, seq_len):
    nonempty = [d for d in docs if d.strip()]
    stream = expected_text_stream(byte_tokenizer, nonempty, seq_len - 1)
    n_rows = len(stream) // (seq_len - 1)
    if n_rows == 0:
        with pytest.raises(NeuronKindsError):
            Corpus.from_texts(docs).tokenize(byte_tokenizer, seq_len=seq_len)
        return
    rows = Corpus.from_texts(docs).tokenize(byte_tokenizer, seq_len=seq_len)
    assert rows.shape == (n_rows, seq_len)
    assert (rows[:, 0] == BOS).all()
    assert rows[:, 1:].flatten().tolist() == stream[: n_rows * (seq_len - 1)]
    assert (rows[:, 1] != SEP).all()  # a row never opens with a separator


def test_opt_rows_decode_to_the_documents_in_order(opt_tokenizer):
    docs = [f"What is {i} + {i * 7}?\nAnswer: {i * 8}" for i in range(40)] + [
        "def f(x):\n    return x"
    ]
    rows = Corpus.from_texts(docs).tokenize(opt_tokenizer, seq_len=32)
    assert opt_tokenizer.bos_token_id == 2 and (rows[:, 0] == 2).all()
    text = opt_tokenizer.decode(rows[:, 1:].flatten().tolist()).replace("</s>", "")
    joined = "".join(docs)
    assert joined.startswith(text) and len(joined) - len(text) < 32 * 8  # only the last partial row
    stream = expected_text_stream(opt_tokenizer, docs, 31)
    assert rows[:, 1:].flatten().tolist() == stream[: rows.numel() - rows.shape[0]]


def test_special_token_strings_in_documents_stay_text(opt_tokenizer):
    rows = Corpus.from_texts(["a </s> b <s> c <pad>" * 8]).tokenize(opt_tokenizer, seq_len=16)
    specials = torch.tensor(opt_tokenizer.all_special_ids)
    assert not torch.isin(rows[:, 1:], specials).any()


def test_n_tokens_takes_the_fewest_full_rows(byte_tokenizer):
    corpus = Corpus.from_texts(["some text here", "and more", "x" * 100])
    full = corpus.tokenize(byte_tokenizer, seq_len=8)
    for n_tokens, n_rows in [(1, 1), (8, 1), (9, 2), (40, 5)]:
        rows = corpus.tokenize(byte_tokenizer, seq_len=8, n_tokens=n_tokens)
        assert rows.shape == (n_rows, 8) and n_rows == math.ceil(n_tokens / 8)
        assert torch.equal(rows, full[:n_rows])
    with pytest.raises(NeuronKindsError, match="fewer than the 100 rows n_tokens=800"):
        corpus.tokenize(byte_tokenizer, seq_len=8, n_tokens=800)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"seq_len": 1}, "seq_len must be an integer >= 2"),
        ({"seq_len": True}, "seq_len must be an integer >= 2"),
        ({"seq_len": 16, "max_len": 8}, "seq_len 16 exceeds the model's context of 8"),
        ({"seq_len": 65}, "exceeds the tokenizer's model_max_length of 64"),
        ({"seq_len": 8, "n_tokens": 0}, "n_tokens must be a positive integer"),
        ({"seq_len": 64}, "fewer than one row"),
    ],
)
def test_tokenize_bad_settings(byte_tokenizer, kwargs, message):
    with pytest.raises(NeuronKindsError, match=message):
        Corpus.from_texts(["a short document"]).tokenize(byte_tokenizer, **kwargs)


def test_tokenizer_without_bos_is_an_error(byte_tokenizer):
    no_bos = PreTrainedTokenizerFast(tokenizer_object=byte_tokenizer.backend_tokenizer)
    assert no_bos.bos_token_id is None
    with pytest.raises(NeuronKindsError, match="no bos_token_id"):
        Corpus.from_texts(["text"]).tokenize(no_bos, seq_len=2)


def test_progress_bar_only_when_asked(byte_tokenizer, capsys):
    corpus = Corpus.from_texts(["x" * 50])
    corpus.tokenize(byte_tokenizer, seq_len=8, progress=False)
    assert capsys.readouterr().err == ""
    corpus.tokenize(byte_tokenizer, seq_len=8, progress=True)
    assert "tokenizing" in capsys.readouterr().err


# ----------------------------------------------------------------------------- sharding


def test_shards_partition_the_documents():
    docs = [f"doc {i}" for i in range(10)]
    corpus = Corpus.from_texts(docs)
    for world_size in (1, 3, 4, 10):
        shards = [list(corpus.shard(r, world_size)) for r in range(world_size)]
        assert [shards[i % world_size][i // world_size] for i in range(10)] == docs
        assert sum(len(s) for s in shards) == len(docs)
    assert corpus.shard(1, 3).description == "texts(n=10)[shard 1/3]"


@pytest.mark.parametrize(
    ("rank", "world_size", "message"),
    [
        (0, 0, "world_size must be a positive integer"),
        (3, 3, r"rank must be in \[0, 3\)"),
        (-1, 2, r"rank must be in \[0, 2\)"),
        (True, 2, "rank must be"),
        (0, 11, "11 shards .* only 10 documents"),
    ],
)
def test_bad_shards(rank, world_size, message):
    with pytest.raises(NeuronKindsError, match=message):
        Corpus.from_texts([f"doc {i}" for i in range(10)]).shard(rank, world_size)


# ----------------------------------------------------------------------------- embedded


def _digest(docs) -> str:
    return hashlib.sha256("\0".join(d.domain + d.key + d.text for d in docs).encode()).hexdigest()


@pytest.mark.slow
def test_embedded_is_deterministic():
    first = _digest(embedded_documents(0))
    embedded_corpus._stdlib_documents.cache_clear()
    embedded_documents.cache_clear()
    assert _digest(embedded_documents(0)) == first  # rebuilt from scratch, identical


def test_embedded_splits_domains_and_seeds():
    docs = embedded_documents(0)
    assert {d.domain for d in docs} == {"code", "prose", "arithmetic"}
    train, heldout, everything = (Corpus.embedded(s) for s in ("train", "heldout", "all"))
    assert len(train) + len(heldout) == len(everything) == len(docs)
    assert 0.03 < len(heldout) / len(everything) < 0.07
    assert not {d.key for d in docs if is_heldout(d.key)} & {
        d.key for d in docs if not is_heldout(d.key)
    }
    assert list(heldout) == [d.text for d in docs if is_heldout(d.key)]
    assert everything.description.startswith("embedded(split=all, seed=0, python=3.")
    assert any(d.domain == "prose" and d.key == "json/decoder.py" for d in docs)

    other = embedded_documents(1)
    arithmetic = [d.text for d in docs if d.domain == "arithmetic"]
    assert arithmetic != [d.text for d in other if d.domain == "arithmetic"]
    assert sorted(d.text for d in docs if d.domain == "code") == sorted(
        d.text for d in other if d.domain == "code"
    )
    with pytest.raises(NeuronKindsError, match="split must be one of"):
        Corpus.embedded("test")


def _linear_side(side: str, value: int) -> int:
    """Evaluate one side of a generated linear equation at its variable = value."""
    if re.fullmatch(r"-?\d+", side):
        return int(side)
    m = re.fullmatch(r"(?:(-?\d+)\*|(-)?)[a-z](?: ([+-]) (\d+))?", side)
    assert m, side
    coefficient = int(m[1]) if m[1] else (-1 if m[2] else 1)
    constant = 0 if m[3] is None else int(m[4]) * (1 if m[3] == "+" else -1)
    return coefficient * value + constant


def test_embedded_arithmetic_answers_are_right():
    checked = 0
    for doc in embedded_documents(0):
        if doc.domain != "arithmetic":
            continue
        question, answer = doc.text.split("\nAnswer: ")
        if m := re.fullmatch(r"What is (-?\d+) ([+-]) (-?\d+)\?", question):
            a, b = int(m[1]), int(m[3])
            assert int(answer) == (a + b if m[2] == "+" else a - b), doc.text
        elif m := re.fullmatch(r"Calculate (-?\d+) / (-?\d+)\.", question):
            assert int(answer) * int(m[2]) == int(m[1]), doc.text
        elif m := re.fullmatch(r"What is the remainder when (\d+) is divided by (\d+)\?", question):
            assert int(answer) == int(m[1]) % int(m[2]), doc.text
        elif m := re.fullmatch(r"Solve (.+) = (.+) for [a-z]\.", question):
            assert _linear_side(m[1], int(answer)) == _linear_side(m[2], int(answer)), doc.text
        elif m := re.fullmatch(r"Round (-?\d+\.\d+) to two decimal places\.", question):
            assert abs(float(answer) - float(m[1])) <= 0.005 + 1e-9, doc.text
        else:
            continue
        checked += 1
    assert checked > 20_000


@pytest.mark.slow
def test_embedded_has_five_million_opt_tokens_fast(opt_tokenizer):
    corpus = Corpus.embedded("train")
    start = time.perf_counter()
    rows = corpus.tokenize(opt_tokenizer, seq_len=2048, n_tokens=5_000_000, progress=False)
    seconds = time.perf_counter() - start
    assert rows.shape == (math.ceil(5_000_000 / 2048), 2048)  # the train split alone has 5M
    assert (rows[:, 0] == 2).all()
    assert seconds < 90, f"tokenizing 5M tokens took {seconds:.0f} s"
    heldout = Corpus.embedded("heldout").tokenize(opt_tokenizer, seq_len=512, progress=False)
    again = Corpus.embedded("heldout").tokenize(opt_tokenizer, seq_len=512, progress=False)
    assert torch.equal(heldout, again)
