"""A tiny Llama with random weights and a tokenizer built offline, for tests and the devnet.

Generation with it is real (the same transformers code path as a full model) but small:
~210k parameters, a 1,000-word vocabulary, 256 positions. Nothing is downloaded. The folder is
written once and reused; the weights depend only on the seed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from itertools import product
from pathlib import Path

from loguru import logger

# Bump when the files written here change, so an old folder is not reused by mistake.
FORMAT_VERSION = 1
MARKER = "supernode-tiny-model.json"
VOCAB_SIZE = 1000
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3
UNK, BOS, EOS, PAD = range(4)
_PLACE_ATTEMPTS = 5  # tries to rename the finished model into place
_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

_COMMON_WORDS = """
the of and to a in is it you that he was for on are with as i his they be at one have this
from or had by hot word but what some we can out other were all there when up use your how
said an each she which do their time if will way about many then them write would like so
these her long make thing see him two has look more day could go come did number sound no
most people my over know water than call first who may down side been now find any new work
part take get place made live where after back little only round man year came show every
good me give our under name very through just form sentence great think say help low line
differ turn cause much mean before move right boy old too same tell does set three want air
well also play small end put home read hand port large spell add even land here must big high
such follow act why ask men change went light kind off need house picture try us again animal
point mother world near build self earth father head stand own page should country found
answer school grow study still learn plant cover food sun four between state keep eye never
last let thought city tree cross farm hard start might story saw far sea draw left late run
while press close night real life few north open seem together next white children begin got
walk example ease paper group always music those both mark often letter until mile river car
feet care second book carry took science eat room friend began idea fish mountain stop once
base hear horse cut sure watch color face wood main enough plain girl usual young ready above
ever red list though feel talk bird soon body dog family direct pose leave song measure door
product black short numeral class wind question happen complete ship area half rock order
fire south problem piece told knew pass since top whole king space heard best hour better true
during hundred five remember step early hold west ground interest reach fast verb sing listen
six table travel less morning ten simple several vowel toward war lay against pattern slow
center love person money serve appear road map rain rule govern pull cold notice voice unit
power town fine certain fly fall lead cry dark machine note wait plan figure star box noun
field rest correct able pound done beauty drive stood contain front teach week final gave
green oh quick develop ocean warm free minute strong special mind behind clear tail produce
fact street inch multiply nothing course stay wheel full force blue object decide surface deep
moon island foot system busy test record boat common gold possible plane stead dry wonder laugh
thousand ago ran check game shape equate miss brought heat snow tire bring yes distant fill
east paint language among
"""
_PUNCTUATION = tuple('.,!?:;-()"/')  # no apostrophe: decoding stays a plain join


def build_vocab(size: int = VOCAB_SIZE) -> list[str]:
    """Special tokens, punctuation, digits, common English words, then made-up syllables."""
    vocab = list(SPECIAL_TOKENS) + list(_PUNCTUATION) + [str(d) for d in range(10)]
    seen = set(vocab)
    for word in _COMMON_WORDS.split():
        if word not in seen:
            seen.add(word)
            vocab.append(word)
    for a, b, c in product("bdfgklmnprstvz", "aeiou", ("", "n", "r", "l", "s", "t", "m", "k")):
        if len(vocab) >= size:
            break
        word = a + b + c
        if word not in seen:
            seen.add(word)
            vocab.append(word)
    if len(vocab) < size:
        raise ValueError(f"cannot build a vocabulary of {size} words (have {len(vocab)})")
    return vocab[:size]


def is_tiny_model(path: Path, seed: int | None = None) -> bool:
    """True if ``path`` holds a complete tiny model of this format (and this seed, if given)."""
    try:
        marker = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("format") != FORMAT_VERSION:
        return False
    if seed is not None and marker.get("seed") != seed:
        return False
    return all((path / name).is_file() for name in _REQUIRED)


def make_tiny_model(dir: Path, seed: int = 0) -> Path:
    """Write a tiny random Llama and its tokenizer into ``dir`` (or reuse it) and return ``dir``.

    The folder is built beside ``dir`` and renamed into place, so a reader never sees half a
    model, and processes racing to make it all end with the same complete folder: whoever
    renames first wins, and the others find its model there and drop their own.
    """
    dir = Path(dir)
    if is_tiny_model(dir, seed):
        logger.debug("reusing tiny model in {}", dir)
        return dir
    if _has_files(dir) and not is_tiny_model(dir, seed):  # again: it may have just been made
        raise FileExistsError(
            f"{dir} is not empty and holds no tiny model with seed {seed}; "
            "pass an empty or new folder"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dir.name}.", dir=dir.parent))
    made = False
    try:
        _write(staging, seed)
        (staging / MARKER).write_text(json.dumps({"format": FORMAT_VERSION, "seed": seed}))
        for path in (staging, *staging.iterdir()):  # mkdtemp and safetensors make them private
            path.chmod(0o755 if path.is_dir() else 0o644)
        made = _move_into_place(staging, dir, seed)
    finally:
        if not made:  # once renamed, the name is free for another process's staging folder
            shutil.rmtree(staging, ignore_errors=True)
    if not is_tiny_model(dir, seed):
        raise OSError(f"made a tiny model for {dir}, but it is not there")
    if made:
        logger.info("made a tiny random model in {} (seed {})", dir, seed)
    else:
        logger.debug("another process made the tiny model in {} first", dir)
    return dir


def _has_files(dir: Path) -> bool:
    try:
        return any(dir.iterdir())
    except FileNotFoundError:  # not there (any more)
        return False


def _move_into_place(staging: Path, dir: Path, seed: int) -> bool:
    """Rename ``staging`` to ``dir``; False if another process put its model there first.

    ``dir`` is missing or empty (an empty one is removed first). Other processes may be doing
    the same at the same moment, their ``rmdir`` or ``rename`` between ours, so either of ours
    can fail; what counts is whether a complete model is at ``dir`` afterwards.
    """
    attempts = 0
    while True:
        try:
            dir.rmdir()
        except OSError:  # already gone, or another process has just put its model there
            pass
        try:
            staging.rename(dir)
            return True
        except OSError:
            if is_tiny_model(dir, seed):  # lost the race; that model is the same as ours
                return False
            attempts += 1
            if attempts >= _PLACE_ATTEMPTS:
                raise
        time.sleep(0.05 * attempts)  # something else is in the way; look again soon


def _write(out: Path, seed: int) -> None:
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    vocab = build_vocab(VOCAB_SIZE)
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        model_max_length=256,
        # Decoding stays a plain join of words, so the text of n tokens is always a prefix of
        # the text of n+1 tokens (streamed chunks add up to the whole).
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(out)

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=PAD,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out)


def main(argv: list[str] | None = None) -> int:
    """``python -m supernode.petals.server.tiny_model DIR [--seed N]``: make (or reuse) one."""
    import argparse

    parser = argparse.ArgumentParser(description="make a tiny random model (offline)")
    parser.add_argument("dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_tiny_model(Path(args.dir), args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
