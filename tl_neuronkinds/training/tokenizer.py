"""A byte-level BPE tokenizer with OPT's special tokens, trained on the embedded corpus.

OPT's tokenizer is GPT-2's byte-level BPE with four special tokens at fixed ids: ``<s>`` = 0,
``<pad>`` = 1, ``</s>`` = 2 (OPT's BOS *and* EOS) and ``<unk>`` = 3. Encoding a string prepends
``</s>`` exactly once (``add_bos_token``), which is what the recorder expects at position 0.
The tokenizer trained here has the same layout, only a smaller vocabulary, and is saved as a
``GPT2Tokenizer`` so ``transformers.AutoTokenizer.from_pretrained(dir)`` rebuilds it offline.
The shipped models share one copy of it (``save_shared_tokenizer``).
"""

import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, GPT2Tokenizer, PreTrainedTokenizerBase

from tl_neuronkinds.atomic import atomic_dir, follow_umask
from tl_neuronkinds.errors import NeuronKindsError

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")
"""OPT's special tokens, in id order: BOS/EOS is ``</s>`` (id 2), padding ``<pad>`` (id 1)."""

BOS_TOKEN = "</s>"
BOS_ID = 2
PAD_ID = 1


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, max_length: int
) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE tokenizer with OPT's special tokens and BOS behaviour.

    Args:
        texts: The training documents (read once).
        vocab_size: Size of the vocabulary, special tokens and the 256 byte symbols included.
        max_length: ``model_max_length`` of the returned tokenizer (the model's context).

    Returns:
        A ``GPT2Tokenizer`` (the class OPT's own tokenizer config names): ``</s>`` is BOS and
        EOS (id 2), ``<pad>`` is 1, and encoding a string prepends ``</s>`` once (the
        post-processor in ``tokenizer.json`` does it, so any ``transformers`` version agrees).

    Raises:
        NeuronKindsError: If ``vocab_size`` cannot hold the special tokens and the 256 bytes.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise NeuronKindsError(
            f"vocab_size={vocab_size} is too small: a byte-level BPE needs at least "
            f"{len(SPECIAL_TOKENS) + 256} ids (4 special tokens + 256 bytes)"
        )
    backend = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix=""))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        continuing_subword_prefix="",
        end_of_word_suffix="",
    )
    backend.train_from_iterator(texts, trainer=trainer)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B:1",
        special_tokens=[(BOS_TOKEN, BOS_ID)],
    )
    if backend.token_to_id(BOS_TOKEN) != BOS_ID or backend.token_to_id("<pad>") != PAD_ID:
        raise NeuronKindsError("tokenizer training put OPT's special tokens at the wrong ids")
    return GPT2Tokenizer(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=BOS_TOKEN,
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
        add_prefix_space=False,
        model_max_length=max_length,
    )


def load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    """Load a tokenizer saved by :func:`train_tokenizer` (offline) and check its BOS.

    Raises:
        NeuronKindsError: If the directory holds no tokenizer or its BOS is not ``</s>`` = 2.
    """
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise NeuronKindsError(f"no tokenizer could be loaded from {path}: {err}") from err
    if tokenizer.bos_token_id != BOS_ID:
        raise NeuronKindsError(
            f"tokenizer in {path} has BOS id {tokenizer.bos_token_id}; OPT's BOS is {BOS_TOKEN!r} = {BOS_ID}"
        )
    return tokenizer


def save_shared_tokenizer(tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Save the tokenizer that several models share to ``directory``, once.

    A new ``directory`` is written atomically. One that already holds a tokenizer is kept as it
    is when it is the same tokenizer (the same ``tokenizer.json``), so the models trained on it
    stay paired with it; a different one is refused.

    Raises:
        NeuronKindsError: If ``directory`` holds another tokenizer.
    """
    existing = directory / "tokenizer.json"
    if not existing.is_file():
        with atomic_dir(directory) as tmp:
            tokenizer.save_pretrained(tmp)
            for path in tmp.iterdir():
                follow_umask(path)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        same = (Path(tmp) / "tokenizer.json").read_bytes() == existing.read_bytes()
    if not same:
        raise NeuronKindsError(
            f"{directory} holds another tokenizer, which the models that share it were trained "
            "on; to train on a new one, remove it and retrain every model that shares it"
        )
