"""Tokenizers for language modelling: a built-in byte-level one, Hugging Face and tiktoken when installed.

    tok = get_tokenizer("byte")                      # UTF-8 bytes 0..255, end of text 256
    tok = get_tokenizer("hf:/path/to/tokenizer")     # a local folder or tokenizer.json (offline)
    tok = get_tokenizer("hf:gpt2")                   # a hub name (the Hugging Face cache or the network)
    tok = get_tokenizer("tiktoken:cl100k_base")            # downloads its ranks once (tiktoken's cache)
    tok = get_tokenizer("tiktoken:/path/to/ranks.tiktoken")  # a local ranks file (offline), cl100k's split

Every tokenizer has ``name`` (the string that made it, also the cache key of tokenized corpora),
``vocab_size``, ``eos_id`` (the separator put between packed documents), ``encode(text) -> list[int]``
and ``decode(ids) -> str`` (undecodable bytes become U+FFFD, the end-of-text id is dropped).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Protocol

import numpy as np

# end-of-text tokens of common tokenizers, tried in order when the tokenizer does not name its own
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "[SEP]")


class Tokenizer(Protocol):
    name: str
    vocab_size: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens (ids 0..255) plus one end-of-text id 256: no vocabulary file, any text."""

    name = "byte"
    vocab_size = 257
    eos_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        """``encode`` as a uint16 array, without a Python list: the fast path for whole corpora."""
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=257, eos_id=256)"


class HFTokenizer:
    """A Hugging Face tokenizer through ``transformers`` (``AutoTokenizer``) or, without it, the
    ``tokenizers`` package (a ``tokenizer.json`` file or a folder holding one).

    When the tokenizer has no end-of-text token, one id is added after its vocabulary for the
    document separator (``vocab_size`` counts it).
    """

    def __init__(self, source: str) -> None:
        self.name = f"hf:{source}"
        local = Path(source).expanduser()
        try:
            from transformers import AutoTokenizer
        except ImportError:
            AutoTokenizer = None
        if AutoTokenizer is not None:
            if local.is_file():  # a tokenizer.json on its own
                from transformers import PreTrainedTokenizerFast

                self._tok = PreTrainedTokenizerFast(tokenizer_file=str(local))
            else:  # a local folder loads without the network; a hub name uses the HF cache (or downloads)
                self._tok = AutoTokenizer.from_pretrained(str(local) if local.exists() else source)
            self._kind = "transformers"
            base_vocab = len(self._tok)
            eos = self._tok.eos_token_id
            if eos is None:
                eos = next((self._tok.convert_tokens_to_ids(t) for t in _EOS_CANDIDATES
                            if t in self._tok.get_vocab()), None)
        else:
            try:
                from tokenizers import Tokenizer as RawTokenizer
            except ImportError:
                raise ImportError(f"tokenizer {self.name!r} needs Hugging Face's tokenizer library: "
                                  f"pip install transformers  (or the lighter: pip install tokenizers)") from None
            if local.is_dir():
                local = local / "tokenizer.json"
            if local.is_file():
                self._tok = RawTokenizer.from_file(str(local))
            elif Path(source).expanduser().exists():
                raise FileNotFoundError(f"tokenizer {self.name!r}: {local} not found; with only the 'tokenizers' "
                                        f"package a folder must hold tokenizer.json (or pip install transformers)")
            else:
                self._tok = RawTokenizer.from_pretrained(source)
            self._kind = "tokenizers"
            base_vocab = self._tok.get_vocab_size(with_added_tokens=True)
            eos = next((self._tok.token_to_id(t) for t in _EOS_CANDIDATES if self._tok.token_to_id(t) is not None), None)
        self.vocab_size = base_vocab if eos is not None else base_vocab + 1
        self.eos_id = int(eos) if eos is not None else base_vocab

    def encode(self, text: str) -> list[int]:
        if self._kind == "transformers":
            return list(self._tok.encode(text, add_special_tokens=False))
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int]) -> str:
        kept = [int(i) for i in ids if int(i) != self.eos_id]
        return self._tok.decode(kept, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


# cl100k_base's pre-tokenization (how text is split into words before BPE), for local ranks files
CL100K_SPLIT = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
                r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")


def read_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    """A ``.tiktoken`` ranks file: one ``<base64 token> <rank>`` line per token."""
    import base64

    ranks = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as err:
            raise ValueError(f"{path}:{number} is not a '<base64 token> <rank>' line of a .tiktoken ranks file "
                             f"({err})") from None
    if not ranks:
        raise ValueError(f"{path} holds no tokens; a .tiktoken ranks file has one '<base64 token> <rank>' line each")
    return ranks


class TiktokenTokenizer:
    """An OpenAI ``tiktoken`` encoding: a named one (``cl100k_base``, ``o200k_base``, ``gpt2``, ...;
    tiktoken downloads its ranks once into its cache, ``TIKTOKEN_CACHE_DIR``), or a local ``.tiktoken``
    ranks file with cl100k's pre-tokenization and an end-of-text token after the last rank. The
    end-of-text token separates documents. Special-token text in a corpus is encoded as plain text."""

    def __init__(self, encoding: str) -> None:
        self.name = f"tiktoken:{encoding}"
        try:
            import tiktoken
        except ImportError:
            raise ImportError(f"tokenizer {self.name!r} needs tiktoken: pip install tiktoken") from None
        path = Path(encoding).expanduser()
        if path.suffix == ".tiktoken" or path.is_file():
            if not path.is_file():
                raise FileNotFoundError(f"tokenizer {self.name!r}: no ranks file at {path}")
            ranks = read_tiktoken_ranks(path)
            self._enc = tiktoken.Encoding(name=path.stem, pat_str=CL100K_SPLIT, mergeable_ranks=ranks,
                                          special_tokens={"<|endoftext|>": max(ranks.values()) + 1})
        else:
            try:
                self._enc = tiktoken.get_encoding(encoding)
            except ValueError:
                raise  # an unknown encoding name: tiktoken's message lists the known ones
            except Exception as err:  # the download of its ranks (no network, a proxy, ...)
                raise RuntimeError(
                    f"tokenizer {self.name!r}: tiktoken could not load the {encoding!r} ranks ({type(err).__name__}: "
                    f"{err}). They download once into TIKTOKEN_CACHE_DIR; offline, copy that cache here or pass a "
                    f"local ranks file: 'tiktoken:/path/to/{encoding}.tiktoken'") from err
        self.vocab_size = int(self._enc.n_vocab)
        self.eos_id = int(self._enc.eot_token)

    def encode(self, text: str) -> list[int]:
        return list(self._enc.encode_ordinary(text))

    def decode(self, ids: Iterable[int]) -> str:
        return self._enc.decode([int(i) for i in ids if int(i) != self.eos_id], errors="replace")

    def __repr__(self) -> str:
        return f"TiktokenTokenizer({self.name!r}, vocab_size={self.vocab_size})"


def get_tokenizer(name: str = "byte") -> Tokenizer:
    """``"byte"``, ``"hf:<hub name or local path>"`` or ``"tiktoken:<encoding name or .tiktoken file>"``."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"tokenizer must be a string: 'byte', 'hf:<name or path>' or 'tiktoken:<encoding>'; got {name!r}")
    if name == "byte":
        return ByteTokenizer()
    kind, _, rest = name.partition(":")
    if kind == "hf" and rest:
        return HFTokenizer(rest)
    if kind == "tiktoken" and rest:
        return TiktokenTokenizer(rest)
    raise ValueError(f"unknown tokenizer {name!r}; use 'byte' (built in), 'hf:<hub name or local path>' "
                     f"(pip install transformers) or 'tiktoken:<encoding>' (pip install tiktoken)")


def encode_array(tokenizer: Tokenizer, text: str) -> np.ndarray:
    """Token ids of ``text`` as the smallest unsigned array type that holds the vocabulary."""
    fast = getattr(tokenizer, "encode_array", None)
    if fast is not None:
        return fast(text)
    return np.asarray(tokenizer.encode(text), dtype=token_dtype(tokenizer.vocab_size))


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)
