"""Language-modelling data: your text files (or the Python standard library's sources), split by file,
tokenized once into a cached token array, packed into fixed-length sequences."""
from __future__ import annotations

import hashlib
import json
import os
import random
import sysconfig
from pathlib import Path
from typing import Literal, Sequence

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..files import atomic_write, zoo_cache_dir
from .sampling import evaluation_loader, training_loader
from .tokenizers import Tokenizer, encode_array, get_tokenizer, token_dtype

TEXT_EXTENSIONS = (".txt", ".md", ".rst", ".py")
STDLIB_MAX_BYTES = 4_000_000
# parts of the standard library that are not its own source: test suites and installed packages
STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}


def stdlib_files(max_bytes: int | None = STDLIB_MAX_BYTES) -> list[Path]:
    """The standard library's own ``*.py`` files (no test suites, no site-packages), in a fixed
    shuffled order, kept while their total size stays within ``max_bytes``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [d for d in subfolders if d not in STDLIB_SKIP]  # never walk into site-packages
        files += [Path(folder) / n for n in names if n.endswith(".py")]
    files.sort()
    if not files:
        raise FileNotFoundError(f"no *.py files under the standard library folder {root}; pass data.args.paths "
                                f"(text files or folders) instead of the default corpus")
    random.Random(0).shuffle(files)  # a spread over the whole library, the same on every run
    return _cap(files, max_bytes)


def _cap(files: list[Path], max_bytes: int | None) -> list[Path]:
    if max_bytes is None:
        return files
    kept, total = [], 0
    for path in files:
        size = path.stat().st_size
        if total + size > max_bytes and kept:
            continue  # a smaller file later may still fit
        kept.append(path)
        total += size
    return kept


def find_text_files(paths: Sequence[str | os.PathLike], extensions: Sequence[str] = TEXT_EXTENSIONS) -> list[Path]:
    """Files named directly, plus every file under the named folders (recursively) whose extension is
    in ``extensions``; sorted, no duplicates. A missing path or a folder without such files is an error."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("data.args.paths is empty; give text files or folders (or leave it unset for the "
                         "Python standard library corpus)")
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    pattern = ", ".join(f"*{e}" for e in sorted(exts))
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_file():
            found.add(path.resolve())
        elif path.is_dir():
            inside = {p.resolve() for p in path.rglob("*") if p.is_file() and p.suffix.lower() in exts}
            if not inside:
                raise FileNotFoundError(f"text folder {path} holds no files matching {pattern} (searched recursively); "
                                        f"add text files or set data.args.extensions")
            found |= inside
        else:
            raise FileNotFoundError(f"text path {path} does not exist; give text files or folders "
                                    f"(folders are searched recursively for {pattern})")
    return sorted(found)


def split_by_file(files: list[Path], val_fraction: float, seed: int) -> tuple[list[Path], list[Path]]:
    """A seeded shuffle of the sorted file list; the first ``val_fraction`` (at least one file) is validation."""
    if len(files) < 2:
        raise ValueError(f"the corpus is split by file into train and validation, but it has {len(files)} file "
                         f"({', '.join(map(str, files))}); give more files, or data.args.val_paths for validation")
    order = sorted(files)
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(val_fraction * len(order))), len(order) - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


def corpus_key(files: Sequence[Path], tokenizer_name: str) -> str:
    """Hash of the file list, sizes and modification times, and the tokenizer: a stale cache never matches."""
    entries = []
    for path in files:
        stat = path.stat()
        entries.append([str(path), stat.st_size, stat.st_mtime_ns])
    blob = json.dumps({"tokenizer": tokenizer_name, "files": entries}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def tokenize_files(files: Sequence[Path], tokenizer: Tokenizer, desc: str = "tokenizing",
                   progress: bool | None = None) -> np.ndarray:
    """Every file's tokens followed by the end-of-text id, concatenated (one flat array)."""
    total = sum(p.stat().st_size for p in files)
    show = total >= 2_000_000 if progress is None else progress
    bar = None
    if show:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc)
        except ImportError:  # tqdm comes with lightning; without it, one line instead of a bar
            print(f"{desc}: {len(files)} files, {total / 1e6:.1f} MB")
    dtype = token_dtype(tokenizer.vocab_size)
    eos = np.array([tokenizer.eos_id], dtype=dtype)
    parts: list[np.ndarray] = []
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        parts += [encode_array(tokenizer, text).astype(dtype, copy=False), eos]
        if bar is not None:
            bar.update(path.stat().st_size)
    if bar is not None:
        bar.close()
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def cached_tokens(files: Sequence[Path], tokenizer: Tokenizer, cache_dir: Path, split: str) -> tuple[np.ndarray, Path]:
    """The split's token array from ``cache_dir`` (memory-mapped), tokenizing and saving it first if missing."""
    path = Path(cache_dir) / f"{split}-{corpus_key(files, tokenizer.name)}.npy"
    if not path.is_file():
        tokens = tokenize_files(files, tokenizer, desc=f"tokenizing {split} ({len(files)} files)")
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.save would append .npy to a path
                np.save(fh, tokens)

        atomic_write(path, write)
    return np.load(path, mmap_mode="r"), path


class PackedTokens(Dataset):
    """``(input_ids, targets)`` windows of ``seq_len + 1`` tokens from one flat token stream.

    ``random``: ``num_samples`` windows at uniformly random offsets (torch's generator, so seeded runs
    and resumed runs draw the same ones). ``chunks``: consecutive non-overlapping chunks (index ``i``
    starts at ``i * seq_len``; the last token of one chunk is the first input of the next, so every
    token but the first is predicted exactly once); ``indices`` picks a subset of chunks.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, mode: Literal["random", "chunks"] = "chunks",
                 num_samples: int | None = None, indices: np.ndarray | None = None) -> None:
        if len(tokens) < seq_len + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill one sequence of seq_len + 1 = {seq_len + 1}")
        self.tokens, self.seq_len, self.mode = tokens, seq_len, mode
        self.num_chunks = (len(tokens) - 1) // seq_len
        self.indices = np.arange(self.num_chunks) if indices is None else np.asarray(indices)
        self.num_samples = num_samples if num_samples is not None else self.num_chunks

    def __len__(self) -> int:
        return self.num_samples if self.mode == "random" else len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.mode == "random":
            start = int(torch.randint(0, len(self.tokens) - self.seq_len, ()).item())
        else:
            start = int(self.indices[i]) * self.seq_len
        window = torch.from_numpy(self.tokens[start:start + self.seq_len + 1].astype(np.int64))  # (T + 1,)
        return window[:-1], window[1:]


class TextDataModule(L.LightningDataModule):
    """Next-token prediction on packed text: files, split by file, tokenized once and cached.

    Args:
        paths: text files and/or folders (searched recursively for ``extensions``). None: the offline
            default, the Python standard library's own ``*.py`` sources (no test suites), capped at
            ``max_bytes`` (default 4,000,000) in a fixed order.
        val_paths: validation files or folders; None splits ``paths`` by file (``val_fraction`` of
            the files, chosen by ``split_seed``).
        tokenizer: ``byte`` (built in), ``hf:<name or path>`` or ``tiktoken:<encoding>``.
        seq_len: tokens per sequence; batches are ``(input_ids, targets)``, both ``(B, seq_len)``.
        train_sampling: ``random`` windows (``train_samples`` per epoch, default one pass of tokens) or
            consecutive ``chunks`` in shuffled order.
        val_sequences: evaluate only this many chunks, evenly spaced over the validation stream
            (a fixed, representative subset); None: every chunk.
        max_bytes: keep files (in a fixed order) up to this many bytes; default: all of yours, 4 MB of stdlib.
        cache_dir: where token arrays are cached (default ``~/.cache/zoo/text``); the key hashes the
            file list, sizes, modification times and tokenizer, so edited files are re-tokenized.
        limit: keep only the first ``limit`` sequences of each split (smoke tests).
    The test split is the validation split (a corpus rarely has a third held-out part).
    """

    def __init__(self, paths: str | list[str] | None = None, val_paths: str | list[str] | None = None,
                 tokenizer: str = "byte", seq_len: int = 256, batch_size: int = 16, val_fraction: float = 0.1,
                 split_seed: int = 0, extensions: Sequence[str] = TEXT_EXTENSIONS,
                 train_sampling: Literal["random", "chunks"] = "random", train_samples: int | None = None,
                 val_sequences: int | None = None, max_bytes: int | None = None, cache_dir: str | None = None,
                 num_workers: int = 0, limit: int | None = None) -> None:
        super().__init__()
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be >= 1; got seq_len={seq_len}, batch_size={batch_size}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1); got {val_fraction}")
        if train_sampling not in ("random", "chunks"):
            raise ValueError(f"train_sampling must be 'random' or 'chunks'; got {train_sampling!r}")
        self.save_hyperparameters()
        self.tokenizer = get_tokenizer(tokenizer)
        self.vocab_size, self.eos_id = self.tokenizer.vocab_size, self.tokenizer.eos_id
        self.seq_len, self.batch_size, self.num_workers = seq_len, batch_size, num_workers
        self.train_sampling, self.train_samples, self.val_sequences, self.limit = \
            train_sampling, train_samples, val_sequences, limit
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else zoo_cache_dir("text")
        # every path is checked now, before any work
        if paths is None:
            files = stdlib_files(STDLIB_MAX_BYTES if max_bytes is None else max_bytes)
        else:
            files = _cap(find_text_files(paths, extensions), max_bytes)
        if val_paths is None:
            train_files, val_files = split_by_file(files, val_fraction, split_seed)
        else:
            train_files, val_files = files, find_text_files(val_paths, extensions)
        for split, chosen in (("train", train_files), ("validation", val_files)):
            if sum(p.stat().st_size for p in chosen) == 0:
                raise ValueError(f"the {split} files are all empty ({', '.join(map(str, chosen[:3]))}"
                                 f"{', ...' if len(chosen) > 3 else ''}); give files with text in them")
        self.files = {"train": train_files, "val": val_files}
        self.tokens: dict[str, np.ndarray] = {}
        self.cache_paths: dict[str, Path] = {}

    def prepare_data(self) -> None:
        """Tokenize and cache both splits (Lightning calls this once per node, before ``setup``)."""
        for split, files in self.files.items():
            cached_tokens(files, self.tokenizer, self.cache_dir, split)

    def setup(self, stage: str | None = None) -> None:
        for split, files in self.files.items():
            if split not in self.tokens:
                self.tokens[split], self.cache_paths[split] = cached_tokens(files, self.tokenizer, self.cache_dir, split)
                if len(self.tokens[split]) < self.seq_len + 1:
                    raise ValueError(f"the {split} split has {len(self.tokens[split])} tokens, fewer than one sequence "
                                     f"(seq_len + 1 = {self.seq_len + 1}); lower data.args.seq_len or add text")

    def dataset(self, split: str) -> PackedTokens:
        tokens = self.tokens[split]
        if split == "train" and self.train_sampling == "random":
            count = self.train_samples or (len(tokens) - 1) // self.seq_len
            return PackedTokens(tokens, self.seq_len, "random", num_samples=min(count, self.limit or count))
        chunks = (len(tokens) - 1) // self.seq_len
        indices = np.arange(chunks)
        if split != "train" and self.val_sequences and self.val_sequences < chunks:
            indices = np.linspace(0, chunks - 1, self.val_sequences).round().astype(np.int64)  # evenly spread
        return PackedTokens(tokens, self.seq_len, "chunks", indices=indices[: self.limit])

    def train_dataloader(self) -> DataLoader:
        # random windows draw their offsets under each sample's seed, so both samplings shuffle the same way
        data = self.dataset("train")
        return training_loader(self, data, self.batch_size, drop_last=len(data) > self.batch_size,
                               num_workers=self.num_workers)

    def _eval_loader(self) -> DataLoader:
        return evaluation_loader(self.dataset("val"), self.batch_size, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def token_counts(self) -> dict[str, int]:
        return {split: len(tokens) for split, tokens in self.tokens.items()}
