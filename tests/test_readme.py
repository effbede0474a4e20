"""README blocks run as written, in a fresh folder, on a machine whose network is down; so do its training
commands, shortened to a step by environment defaults (below the config file and the command line).

Lines marked ``[network file]`` read a release file: a small random stand-in is placed where the error of
the missing file says to put it (the error is part of what is tested). ``[run output]`` lines read what a
training run writes; a random model is saved there. ``[network]`` is the hub upload, whose client gets a
stand-in. A changed default or name that breaks one of these lines fails here.
"""
from __future__ import annotations

import re
import runpy
import shlex
import socket
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import save_file

import zoo
from zoo import network
from zoo.data import write_image
from zoo.__main__ import main as zoo_cli
from zoo.training import main
from weights_helpers import put_in_hf_cache
from weights_helpers import hf_cache  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKERS = ("[network file]", "[run output]", "[network]")

# headings whose python block is not run here, and why
NOT_RUN = {"## Scale-wise generation (VAR)": "its release files are 1.3 GB and sampling takes minutes on a CPU"}


def python_blocks() -> dict[str, str]:
    """Each ```python block of the README under the heading above it (a fence's own lines are never headings)."""
    blocks: dict[str, str] = {}
    heading, fence, body = "", None, []
    for line in README.read_text().splitlines():
        if fence is None and line.startswith("```"):
            fence, body = line[3:].strip(), []
        elif fence is not None and line.startswith("```"):
            if fence == "python":
                assert heading not in blocks, f"two python blocks under {heading!r}: give each its own heading"
                blocks[heading] = "\n".join(body) + "\n"
            fence = None
        elif fence is not None:
            body.append(line)
        elif line.startswith("#"):
            heading = line
    return blocks


def _hinted_path(arch: str, pretrained: str) -> Path:
    """Where the error for a missing release file says to put it."""
    with pytest.raises(FileNotFoundError) as info:
        zoo.create(arch, pretrained=pretrained)
    found = re.search(rf"place it at (\S*{re.escape(pretrained)})\b", str(info.value))
    assert found, f"the error names no place for {pretrained}: {info.value}"
    return Path(found.group(1))


def _place_release(arch: str, release: str, **kwargs) -> str:
    """A random ``arch`` saved as ``release`` where the missing-file error says; returns the file's name."""
    path = _hinted_path(arch, release)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(zoo.create(arch, **kwargs).state_dict(), path)
    return release


def _quick_tour(hf_cache_dir: Path, workdir: Path) -> list[str]:
    repo = "timm/seresnet50.a1_in1k"
    with pytest.raises(FileNotFoundError) as info:
        zoo.create("seresnet50.a1_in1k", pretrained=True)
    folder = hf_cache_dir / ("models--" + repo.replace("/", "--"))
    assert str(folder) in str(info.value), "the hub error names the cache folder"
    save_file(zoo.create("seresnet50").state_dict(), str(workdir / "stand_in.safetensors"))
    put_in_hf_cache(hf_cache_dir, repo, {"model.safetensors": (workdir / "stand_in.safetensors").read_bytes()})
    (workdir / "stand_in.safetensors").unlink()
    return ["seresnet50.a1_in1k", _place_release("fcanet50", "fca50.pth"),
            _place_release("eca_resnet50", "eca_resnet50_k3557.pth.tar"), _place_release("rcan_x2", "RCAN_BIX2.pt"),
            "push_to_hub"]


def _language_models(hf_cache_dir: Path, workdir: Path) -> list[str]:
    zoo.save_pretrained(zoo.create("moc_lm_tiny"), workdir / "runs" / "moc_lm_tiny" / "export")
    return ["runs/moc_lm_tiny/export"]


def _channelvit(hf_cache_dir: Path, workdir: Path) -> list[str]:
    _place_release("channelvit_small_p8", "so2sat_channelvit_small_p8_with_hcs_random_split_supervised.pth",
                   in_chans=18)  # So2Sat's bands
    return ["channelvit_small_p8.hcs_sup_so2sat_random"]


def _nothing(hf_cache_dir: Path, workdir: Path) -> list[str]:
    return []


# heading -> what to place before its block runs (returns a name found on each marked line)
STAND_INS: dict[str, Callable[[Path, Path], list[str]]] = {
    "## A quick tour": _quick_tour,
    "## Language models (MoC)": _language_models,
    "## Multi-channel images: ChannelViT": _channelvit,
    "## Pruning": _nothing,
    "## Quantization": _nothing,
    "### Which layers are hard to quantize, and mixed precision under a budget": _nothing,
    "### Fast on the CPU": _nothing,
    "### Export to ONNX": _nothing,
}


def test_every_python_block_is_run_or_says_why_not():
    assert set(python_blocks()) == set(STAND_INS) | set(NOT_RUN)


@pytest.fixture
def network_down(hf_cache, monkeypatch):  # noqa: F811 (fixture)
    """No offline switch, but every connection fails: the zoo must notice at once and use its caches. The hub
    upload's client is a stand-in that records what it was given."""
    import huggingface_hub
    from huggingface_hub import constants

    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    monkeypatch.setattr(network, "_probes", {})
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    uploads: list[list[str]] = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kwargs: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder",
                        lambda self, folder_path, **kwargs: uploads.append(sorted(p.name for p in Path(folder_path).iterdir())))
    return uploads


@pytest.mark.parametrize("heading", list(STAND_INS))
def test_readme_block_runs_as_written(heading, tmp_path, monkeypatch, torch_home, hf_cache, network_down):  # noqa: F811
    block = python_blocks()[heading]
    monkeypatch.chdir(tmp_path)  # files the block writes land here
    placed = STAND_INS[heading](hf_cache, tmp_path)
    marked = [line for line in block.splitlines() if any(m in line for m in MARKERS)]
    for line in marked:  # each marked line has its stand-in, and each stand-in its marked line
        assert any(name in line for name in placed), f"no stand-in for the marked line {line!r}"
    for name in placed:
        assert any(name in line for line in marked), f"the stand-in {name!r} has no marked line"
    script = tmp_path / "block.py"
    script.write_text(block)
    runpy.run_path(str(script), run_name="__main__")
    if "push_to_hub" in placed:
        assert network_down == [["README.md", "config.json", "model.safetensors"]]


def shell_commands(heading: str) -> list[str]:
    """The commands of the ```sh blocks right under ``heading``: continued lines joined, comments dropped."""
    commands, current, fence = [], "", None
    for line in README.read_text().split(heading + "\n", 1)[1].splitlines():
        if fence is None and line.startswith("#"):
            break  # the next heading
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
        elif fence == "sh":
            current += line.rstrip("\\").strip() + " "
            if not line.endswith("\\"):
                if shlex.split(current, comments=True):  # not a comment line
                    commands.append(current.strip())
                current = ""
    return commands


# every README training command for one step: what a user sets the same way (PL_<SUBCOMMAND>__KEY)
ONE_STEP = {"PL_FIT__TRAINER__MAX_STEPS": "1", "PL_FIT__TRAINER__LIMIT_TRAIN_BATCHES": "1",
            "PL_FIT__TRAINER__LIMIT_VAL_BATCHES": "1", "PL_FIT__TRAINER__NUM_SANITY_VAL_STEPS": "0",
            "PL_FIT__TRAINER__LIMIT_TEST_BATCHES": "1", "PL_TEST__TRAINER__LIMIT_TEST_BATCHES": "1",
            "PL_FIT__TRAINER__LOGGER": "false"}  # metrics.csv only, where no command names a logger


def _run_as_written(command: str) -> int:
    """``python train.py ARGS`` in this process: train.py is ``sys.exit(zoo.training.main())``."""
    argv = shlex.split(command, comments=True)
    assert argv[:2] == ["python", "train.py"], command
    try:
        return main(argv[2:])
    except SystemExit as done:  # --print_config and --help end in an exit
        return done.code or 0


def test_readme_training_commands_run_as_written(tmp_path, monkeypatch):
    setup = shell_commands("## Set-up")[0].split(" && ")
    ci = (ROOT / ".ci" / "run").read_text()
    install = setup[2].split("pip install ")[1]
    assert setup[0] in ci and install.replace('".[train]"', '".[test]"') in ci  # CI's install has the train extra
    training = shell_commands("## Training")
    assert len(training) == 9, training
    monkeypatch.chdir(tmp_path)  # the runs/ folders land here
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    for key, value in ONE_STEP.items():
        monkeypatch.setenv(key, value)
    for command in [setup[-1]] + training:
        assert _run_as_written(command) == 0, command
    # a fresh fit per command in its own numbered folder; the resume and the test ran in the latest
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["csv", "digits_seresnet"] + [f"digits_seresnet-{n}" for n in range(2, 7)] + ["quickstart"], runs
    metrics = (tmp_path / "runs" / "digits_seresnet-2" / "metrics.csv").read_text()
    assert "test/top1" in metrics.splitlines()[0]


# generation as written streams 200 tokens (the default too); here 8, the last --max-new-tokens winning
GENERATE_SHORT = ["--max-new-tokens", "8"]


def _run_module_cli(command: str) -> int:
    """``python -m zoo ARGS`` in this process."""
    argv = shlex.split(command, comments=True)
    assert argv[:3] == ["python", "-m", "zoo"], command
    return zoo_cli(argv[3:] + (GENERATE_SHORT if argv[3] == "generate" else []))


# the sampling benchmark as written draws 200 samples seven times; here one per class, once
VAR_SAMPLING_SHORT = ["--per-class", "1", "--repeats", "1", "--batch", "2", "--json", "var_sampling.json"]


def _run_benchmark(command: str, monkeypatch) -> None:
    argv = shlex.split(command, comments=True)
    assert argv[:2] == ["python", "benchmarks/var_sampling.py"], command
    monkeypatch.setattr(sys, "argv", [str(ROOT / argv[1])] + argv[2:] + VAR_SAMPLING_SHORT)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script prepends its folders
    runpy.run_path(str(ROOT / argv[1]), run_name="__main__")


def _run_command(command: str, monkeypatch) -> None:
    if command.startswith("python train.py"):
        assert _run_as_written(command) == 0, command
    elif command.startswith("python -m zoo"):
        assert _run_module_cli(command) == 0, command
    else:
        _run_benchmark(command, monkeypatch)


def test_readme_shell_blocks_run_as_written(tmp_path, monkeypatch, capsys):
    """The language model's, VAR's and the ONNX commands in order, shortened (training to one step,
    generation to 8 tokens, the sampling benchmark to one sample per class): what one command writes (an
    export folder, a tokenizer) is what the next one reads, as the README says."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "docs").mkdir()  # the sampling benchmark writes its grid there
    corpus = tmp_path / "my_corpus"  # the README's "your text files"
    corpus.mkdir()
    for name in ("shlex.py", "textwrap.py", "fnmatch.py"):
        (corpus / name).write_text((Path(shlex.__file__).parent / name).read_text())
    for key, value in ONE_STEP.items():
        monkeypatch.setenv(key, value)
    language = shell_commands("## Language models (MoC)")
    var = shell_commands("## Scale-wise generation (VAR)")
    onnx = shell_commands("### Export to ONNX")
    assert (len(language), len(var), len(onnx)) == (5, 5, 1), (language, var, onnx)
    for command in language + var + onnx:
        _run_command(command, monkeypatch)
    assert (tmp_path / "three.png").stat().st_size > 0 and (tmp_path / "docs" / "var_digits_samples.png").exists()
    assert (tmp_path / "seresnet18.onnx").stat().st_size > 0
    out = capsys.readouterr().out
    assert "def " in out  # the generated continuations start with the prompt


def test_readme_cluster_launch_arguments_parse(tmp_path, monkeypatch, capsys):
    """torchrun and srun need a cluster; the train.py arguments they pass are parsed and resolved here."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    commands = shell_commands("### Scaling out")
    assert [c.split()[0] for c in commands] == ["torchrun", "srun"], commands
    for command in commands:
        argv = shlex.split(command.replace("NAME.yaml", "digits_seresnet.yaml"), comments=True)
        args = argv[argv.index("train.py") + 1:]
        assert _run_as_written(" ".join(["python", "train.py", "fit"] + args + ["--print_config"])) == 0, command
        printed = capsys.readouterr().out
        assert re.search(r"\n  num_nodes: 2\n", printed) and re.search(r"\n  devices: '?8'?\n", printed), printed[:600]


def prose_commands(heading: str) -> list[str]:
    """The `python -m zoo ...` commands quoted in the paragraphs (not the code blocks) under ``heading``."""
    text, fence, inside = [], False, False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            inside = line == heading
        elif inside and not fence:
            text.append(line)
    quoted = re.findall(r"`(python -m zoo [^`]*)`", " ".join(text))
    return [q for q in quoted if "COMMAND" not in q]  # `python -m zoo COMMAND --help` names the form


# what the tour's commands read or make, placed first; `check` at 32x32 instead of 128 (five ResNets)
TOUR_SHORT = {"check": ["--size", "32", "--batch", "1"], "generate": GENERATE_SHORT}


def test_readme_tour_commands_run_as_written(tmp_path, monkeypatch, capsys, torch_home, hf_cache, network_down):  # noqa: F811
    """Every command of the tour's "From the shell" paragraph; `sample` needs the release's files, and its
    error says which and where (the machine is offline here)."""
    monkeypatch.chdir(tmp_path)
    write_image(torch.rand(3, 24, 24), tmp_path / "in.png")
    zoo.save_pretrained(zoo.create("moc_lm_tiny"), tmp_path / "runs" / "moc_lm_tiny" / "export")  # a run's export
    commands = prose_commands("## A quick tour")
    assert [shlex.split(c)[3] for c in commands] == ["list", "info", "check", "generate", "sample", "quantize",
                                                     "export-onnx", "upscale"], commands
    for command in commands:
        argv = shlex.split(command)[3:]
        rc = zoo_cli(argv + TOUR_SHORT.get(argv[0], []))
        out = capsys.readouterr()
        if argv[0] == "sample":
            assert rc == 2 and re.search(r"place it at \S+\.pth", out.err), out.err
        else:
            assert rc == 0, (command, out.err[-2000:])
    for name in ("rcan_w4a8.safetensors", "seresnet18.onnx", "out.png"):
        assert (tmp_path / name).stat().st_size > 0, name
