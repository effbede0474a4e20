"""Language modelling: tokenizers, the packed text data module (split by file, cache, bad input), the
task's loss and perplexity against a hand computation, and a short fit through train.py."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader

from zoo.data import DATAMODULES, TextDataModule, get_tokenizer
from zoo.data import text as text_data
from zoo.tasks import TASKS
from zoo.tasks.language_model import LanguageModelTask

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from zoo.training import run  # noqa: E402


class TinyLM(nn.Module):
    """Stand-in causal LM: an embedding of the current and previous token, then a linear head."""

    def __init__(self, vocab_size: int = 257, dim: int = 16) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, dim)
        self.prev = nn.Embedding(vocab_size, dim)
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        shifted = F.pad(input_ids, (1, 0))[:, :-1]  # (B, T) the previous token, 0 at the start
        return self.head(torch.tanh(self.embed(input_ids) + self.prev(shifted)))  # (B, T, V)


def write_corpus(root: Path, count: int = 10) -> list[Path]:
    """``count`` small, distinct text files (one with non-ASCII text) in two nested folders."""
    files = []
    for i in range(count):
        path = root / ("a" if i % 2 else "b/c") / f"doc{i:02d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f"line {j} of document {i}: {'é∑' if i == 3 else 'abc'} {j * i}\n" for j in range(12 + i))
        path.write_text(body, encoding="utf-8")
        files.append(path)
    (root / "a" / "skip.bin").write_bytes(b"\x00\x01 not text")  # wrong extension: ignored
    return files


# ---------------------------------------------------------------- tokenizers

def test_byte_tokenizer_round_trip():
    tok = get_tokenizer("byte")
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("byte", 257, 256)
    text = "def f(x):\n    return 'naïve ∑ 🐍'\n"
    ids = tok.encode(text)
    assert ids == list(text.encode("utf-8")) and max(ids) < 256
    assert len(ids) == len(text) + 1 + 2 + 3  # ï: 2 bytes, ∑: 3, 🐍: 4 (each counted once in len(text))
    assert tok.decode(ids) == text
    assert tok.decode(ids[:5] + [tok.eos_id] + ids[5:]) == text  # end-of-text is dropped
    assert tok.decode([0xE2, 0x88]) == "\ufffd"  # a cut multi-byte character is replaced, not an error
    np.testing.assert_array_equal(text_data.encode_array(tok, text), np.array(ids, dtype=np.uint16))


def test_tokenizer_errors_name_the_fix(monkeypatch):
    with pytest.raises(ValueError, match="unknown tokenizer 'bpe'.*'byte'.*hf:.*tiktoken:"):
        get_tokenizer("bpe")
    with pytest.raises(ValueError, match="unknown tokenizer 'hf:'"):
        get_tokenizer("hf:")
    # None in sys.modules makes the import fail as if the package were not installed
    for name in ("transformers", "tokenizers", "tiktoken"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="pip install transformers.*pip install tokenizers"):
        get_tokenizer("hf:gpt2")
    with pytest.raises(ImportError, match="pip install tiktoken"):
        get_tokenizer("tiktoken:cl100k_base")


def test_tiktoken_wrapper_uses_its_end_of_text(monkeypatch):
    """The wrapper's contract against a fake ``tiktoken`` module (named encodings download their ranks)."""
    class FakeEncoding:
        n_vocab, eot_token = 300, 299

        def encode_ordinary(self, text):
            return [ord(c) for c in text]

        def decode(self, ids, errors="strict"):
            return "".join(chr(i) for i in ids)

    fake = type(sys)("tiktoken")
    fake.get_encoding = lambda name: FakeEncoding()
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    tok = get_tokenizer("tiktoken:fake")
    assert (tok.name, tok.vocab_size, tok.eos_id) == ("tiktoken:fake", 300, 299)
    assert tok.encode("ab") == [97, 98] and tok.decode([97, 299, 98]) == "ab"
    assert text_data.encode_array(tok, "ab").dtype == np.uint16


def _write_ranks(path, tokens: list[bytes]) -> None:
    import base64

    path.write_text("".join(f"{base64.b64encode(t).decode()} {rank}\n" for rank, t in enumerate(tokens)))


def test_tiktoken_local_ranks_file_with_the_real_package(tmp_path):
    """``tiktoken:<file>.tiktoken`` builds a real tiktoken Encoding offline: the 256 bytes plus three merges,
    cl100k's pre-tokenization, end-of-text after the last rank; merges apply, text round-trips."""
    tiktoken = pytest.importorskip("tiktoken")
    ranks = tmp_path / "tiny.tiktoken"
    _write_ranks(ranks, [bytes([b]) for b in range(256)] + [b"de", b"def", b" r"])
    tok = get_tokenizer(f"tiktoken:{ranks}")
    assert isinstance(tok._enc, tiktoken.Encoding)
    assert (tok.vocab_size, tok.eos_id) == (260, 259)
    assert tok.encode("def") == [257] and tok.encode("de") == [256]
    text = "def f(x):\n    return 'naïve ∑'\n"
    ids = tok.encode(text)
    assert 258 in ids and len(ids) < len(text.encode())  # " r" of " return" merged
    assert tok.decode(ids) == text and tok.decode(ids[:3] + [tok.eos_id] + ids[3:]) == text
    assert text_data.encode_array(tok, text).tolist() == ids
    # the cl100k split keeps "def" and " f" apart: no merge crosses a pre-token boundary
    assert tok.encode("de f") == [256, 32, 102]


def test_tiktoken_errors_name_the_fix(tmp_path, monkeypatch):
    tiktoken = pytest.importorskip("tiktoken")
    with pytest.raises(FileNotFoundError, match="no ranks file at .*missing.tiktoken"):
        get_tokenizer(f"tiktoken:{tmp_path / 'missing.tiktoken'}")
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("not-base64!! 0\n")
    with pytest.raises(ValueError, match="bad.tiktoken:1 is not a '<base64 token> <rank>' line"):
        get_tokenizer(f"tiktoken:{bad}")
    with pytest.raises(ValueError, match="Unknown encoding"):  # tiktoken's own message lists the known ones
        get_tokenizer("tiktoken:no_such_encoding")

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    tiktoken.registry.ENCODINGS.pop("cl100k_base", None)  # an encoding loaded earlier in the process
    with pytest.raises(RuntimeError, match="could not load the 'cl100k_base' ranks.*tiktoken:/path/to/cl100k_base.tiktoken"):
        get_tokenizer("tiktoken:cl100k_base")


def test_hf_tokenizer_loads_a_local_tokenizer_json_offline(tmp_path, monkeypatch):
    """Without transformers, the ``tokenizers`` route reads ``<folder>/tokenizer.json`` (no network);
    a tokenizer without an end-of-text token gets one id after its vocabulary."""
    opened = []

    class FakeRaw:
        vocab = {"a": 0, "b": 1, "</s>": 2}

        @classmethod
        def from_file(cls, path):
            opened.append(path)
            tok = cls()
            if "noeos" in path:
                tok.vocab = {"a": 0, "b": 1}
            return tok

        @classmethod
        def from_pretrained(cls, name):
            raise AssertionError("a local path must not reach the hub")

        def get_vocab_size(self, with_added_tokens=True):
            return len(self.vocab)

        def token_to_id(self, token):
            return self.vocab.get(token)

        def encode(self, text, add_special_tokens=False):
            return type("Encoding", (), {"ids": [self.vocab[c] for c in text]})()

        def decode(self, ids, skip_special_tokens=True):
            return "".join("ab"[i] for i in ids)

    fake = type(sys)("tokenizers")
    fake.Tokenizer = FakeRaw
    monkeypatch.setitem(sys.modules, "transformers", None)
    monkeypatch.setitem(sys.modules, "tokenizers", fake)
    for folder in ("tok", "noeos"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "tokenizer.json").write_text("{}")
    tok = get_tokenizer(f"hf:{tmp_path / 'tok'}")
    assert opened == [str(tmp_path / "tok" / "tokenizer.json")]
    assert (tok.vocab_size, tok.eos_id, tok.encode("ab"), tok.decode([0, 2, 1])) == (3, 2, [0, 1], "ab")
    bare = get_tokenizer(f"hf:{tmp_path / 'noeos' / 'tokenizer.json'}")
    assert (bare.vocab_size, bare.eos_id) == (3, 2)  # one id added for the document separator
    (tmp_path / "nojson").mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer.json not found"):
        get_tokenizer(f"hf:{tmp_path / 'nojson'}")


# ---------------------------------------------------------------- data

def test_hf_tokenizer_with_the_real_tokenizers_package(tmp_path):
    """A byte-level BPE trained here with Hugging Face's ``tokenizers`` and saved as a folder loads
    through ``hf:<folder>`` offline, round-trips text and names its end-of-text token."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["def add(a, b):\n    return a + b\n"] * 50, trainer=trainer)
    (tmp_path / "tok").mkdir()
    bpe.save(str(tmp_path / "tok" / "tokenizer.json"))
    tok = get_tokenizer(f"hf:{tmp_path / 'tok'}")
    text = "def add(x, y):\n    return x + y  # é\n"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and len(ids) < len(text.encode())  # merges learned on the corpus apply
    assert tok.eos_id == bpe.token_to_id("<|endoftext|>") == 0 and tok.vocab_size == bpe.get_vocab_size()
    assert tok.decode(ids + [tok.eos_id]) == text  # the end-of-text id is dropped on decoding


def test_split_by_file_packing_and_batches(tmp_path):
    files = write_corpus(tmp_path / "corpus")
    dm = TextDataModule(paths=str(tmp_path / "corpus"), seq_len=32, batch_size=4, val_fraction=0.2,
                        cache_dir=str(tmp_path / "cache"))
    train_files, val_files = dm.files["train"], dm.files["val"]
    assert len(val_files) == 2 and len(train_files) == 8
    assert sorted(train_files + val_files) == sorted(p.resolve() for p in files)  # .bin skipped, none lost
    same = TextDataModule(paths=str(tmp_path / "corpus"), val_fraction=0.2, cache_dir=str(tmp_path / "cache"))
    assert same.files == dm.files  # deterministic for a seed
    other = [TextDataModule(paths=str(tmp_path / "corpus"), val_fraction=0.2, split_seed=s,
                            cache_dir=str(tmp_path / "cache")).files["val"] for s in range(1, 6)]
    assert any(v != val_files for v in other)  # and the seed matters

    dm.setup("fit")
    tok = get_tokenizer("byte")
    expected = [t for p in val_files for t in tok.encode(p.read_text(encoding="utf-8")) + [256]]
    np.testing.assert_array_equal(np.asarray(dm.tokens["val"]), expected)  # documents, eos after each
    val = dm.dataset("val")
    assert len(val) == (len(expected) - 1) // 32
    for i in (0, len(val) - 1):
        x, y = val[i]
        assert x.tolist() == expected[32 * i:32 * i + 32] and y.tolist() == expected[32 * i + 1:32 * i + 33]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
    stream = np.asarray(dm.tokens["train"])
    for row in torch.cat([x, y[:, -1:]], dim=1):  # each random window is a slice of the train stream
        starts = np.flatnonzero(stream[: len(stream) - 32] == row[0].item())
        assert any((stream[s:s + 33] == row.numpy()).all() for s in starts)

    subset = TextDataModule(paths=str(tmp_path / "corpus"), seq_len=8, val_fraction=0.2, val_sequences=5,
                            cache_dir=str(tmp_path / "cache"))
    subset.setup()
    chunks = (len(expected) - 1) // 8
    np.testing.assert_array_equal(subset.dataset("val").indices, np.linspace(0, chunks - 1, 5).round())
    assert subset.dataset("val").indices[-1] == chunks - 1  # spread over the whole split


def test_token_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    files = write_corpus(tmp_path / "corpus", count=4)
    cache = tmp_path / "cache"
    first = TextDataModule(paths=str(tmp_path / "corpus"), seq_len=16, val_fraction=0.25, cache_dir=str(cache))
    first.prepare_data()
    first.setup()
    saved = sorted(p.name for p in cache.iterdir())
    assert len(saved) == 2 and all(n.endswith(".npy") for n in saved)  # train + val, no temporary files left

    calls = []
    real = text_data.tokenize_files
    monkeypatch.setattr(text_data, "tokenize_files", lambda *a, **k: calls.append(a) or real(*a, **k))
    again = TextDataModule(paths=str(tmp_path / "corpus"), seq_len=16, val_fraction=0.25, cache_dir=str(cache))
    again.setup()
    assert calls == []  # read from the cache
    np.testing.assert_array_equal(np.asarray(again.tokens["train"]), np.asarray(first.tokens["train"]))

    edited = next(p for p in files if p.resolve() in first.files["train"])
    edited.write_text(edited.read_text() + "one more line\n", encoding="utf-8")  # size and mtime change
    changed = TextDataModule(paths=str(tmp_path / "corpus"), seq_len=16, val_fraction=0.25, cache_dir=str(cache))
    changed.setup()
    assert len(calls) == 1  # only the train split was tokenized again
    assert len(changed.tokens["train"]) == len(first.tokens["train"]) + len("one more line\n")
    assert len(list(cache.iterdir())) == 3


def test_bad_corpus_input_is_named(tmp_path):
    cache = str(tmp_path / "cache")
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist.*\*\.txt"):
        TextDataModule(paths=str(tmp_path / "nowhere"), cache_dir=cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty holds no files matching .*\*\.md.*recursively"):
        TextDataModule(paths=str(tmp_path / "empty"), cache_dir=cache)
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "x.bin").write_bytes(b"123")
    with pytest.raises(FileNotFoundError, match="binary holds no files matching"):
        TextDataModule(paths=str(tmp_path / "binary"), cache_dir=cache)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "only.txt").write_text("hello")
    with pytest.raises(ValueError, match="split by file.*1 file.*val_paths"):
        TextDataModule(paths=str(tmp_path / "one"), cache_dir=cache)
    (tmp_path / "blank").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "blank" / name).write_text("")
    with pytest.raises(ValueError, match="all empty"):
        TextDataModule(paths=str(tmp_path / "blank"), cache_dir=cache)
    short = TextDataModule(paths=str(tmp_path / "one"), val_paths=str(tmp_path / "one"), seq_len=64, cache_dir=cache)
    with pytest.raises(ValueError, match="fewer than one sequence.*lower data.args.seq_len"):
        short.setup()
    with pytest.raises(ValueError, match="val_fraction"):
        TextDataModule(paths=str(tmp_path / "one"), val_fraction=1.0, cache_dir=cache)


def test_stdlib_default_corpus():
    files = text_data.stdlib_files(max_bytes=300_000)
    assert 0 < sum(p.stat().st_size for p in files) <= 300_000 and len(files) > 3
    assert all(p.suffix == ".py" and not {"test", "tests", "site-packages"} & set(p.parts) for p in files)
    assert text_data.stdlib_files(max_bytes=300_000) == files  # the same choice every time
    assert DATAMODULES["text"] is TextDataModule and TASKS["language_model"] is LanguageModelTask


# ---------------------------------------------------------------- task

def test_loss_and_perplexity_match_a_hand_computation():
    """Perplexity is exp(mean loss over every scored token of the set), not a mean of batch figures."""
    torch.manual_seed(0)
    model = TinyLM(vocab_size=11, dim=8)
    batches = []
    for batch_size, ignored in ((3, 0), (1, 5)):  # batches with different numbers of scored tokens
        x = torch.randint(0, 11, (batch_size, 7))
        y = torch.randint(0, 11, (batch_size, 7))
        y[0, :ignored] = -100
        batches.append((x, y))
    task = LanguageModelTask(model, sample_prompt=None)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.validate(task, dataloaders=DataLoader(batches, batch_size=None), verbose=False)[0]

    with torch.no_grad():
        losses = [F.cross_entropy(model(x).reshape(-1, 11), y.reshape(-1), reduction="none")[y.reshape(-1) >= 0]
                  for x, y in batches]
    mean = torch.cat(losses).mean().item()  # 21 + 2 tokens, each weighted once
    assert metrics["val/loss"] == pytest.approx(mean, rel=1e-5)
    assert metrics["val/ppl"] == pytest.approx(math.exp(mean), rel=1e-5)
    per_batch = sum(math.exp(l.mean().item()) for l in losses) / 2
    assert abs(per_batch - metrics["val/ppl"]) > 1e-3  # the wrong definitions differ on these batches
    assert abs(sum(l.mean().item() for l in losses) / 2 - mean) > 1e-3


def test_vocabulary_mismatch_is_named(tmp_path):
    write_corpus(tmp_path / "corpus", count=4)
    dm = TextDataModule(paths=str(tmp_path / "corpus"), seq_len=16, cache_dir=str(tmp_path / "cache"))
    task = LanguageModelTask(TinyLM(vocab_size=100))
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    with pytest.raises(ValueError, match="'byte' has 257 tokens.*vocabulary has 100.*vocab_size: 257"):
        trainer.fit(task, datamodule=dm)


def _config(tmp_path: Path, model: str, kwargs: dict) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "moc_lm_tiny.yaml").read_text())
    cfg["model"] = {"name": model, "kwargs": kwargs}
    cfg["data"]["args"].update(paths=str(tmp_path / "corpus"), seq_len=16, batch_size=4, val_sequences=4,
                               cache_dir=str(tmp_path / "cache"))
    cfg["task"]["args"].update(sample_prompt="line ", sample_tokens=8, ema_decay=0.9)
    cfg["trainer"].update(max_steps=3, max_epochs=1, limit_val_batches=1, val_check_interval=3,
                          num_sanity_val_steps=0, enable_progress_bar=False, log_every_n_steps=1)
    cfg.pop("scheduler", None)
    cfg["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_fit_three_steps_through_train_py(tmp_path):
    write_corpus(tmp_path / "corpus")
    kwargs = {"dim": 16, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "hidden_dim": 32, "top_k": 8}  # MoC, K = H/4
    cli = run(["--config", str(_config(tmp_path, "moc_lm_tiny", kwargs))])  # fit, then test
    assert cli.trainer.global_step == 3
    assert {"test/loss", "test/ppl", "test_ema/loss", "test_ema/ppl"} <= cli.results.keys()
    assert cli.results["test/ppl"] == pytest.approx(math.exp(cli.results["test/loss"]), rel=1e-5)
    assert 4.0 < cli.results["test/loss"] < 7.0  # near log(257) = 5.55 after three steps
    out = tmp_path / "run"
    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "metrics.csv").is_file()
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "train/tokens_per_s" in header and "val/ppl" in header
    sample = (out / "samples.txt").read_text(encoding="utf-8")
    assert "step 3" in sample and "\nline " in sample
    # the exported folder is what `python -m zoo generate --weights` reads (architecture kwargs included)
    from zoo.__main__ import main

    assert (out / "export" / "model.safetensors").is_file()
    assert main(["generate", "--model", "moc_lm_tiny", "--weights", str(out / "export"), "--prompt", "line ",
                 "--max-new-tokens", "5", "--temperature", "0"]) == 0
