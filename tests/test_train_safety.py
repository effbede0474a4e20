"""The loop as a careless or hostile user meets it: no checkpoint runs code, a killed run resumes
bit for bit (mid-epoch too), last.ckpt is the last state, metrics.csv has every step once, a second
run in the same folder is refused, and every bad --ckpt_path is one sentence."""
from __future__ import annotations

import csv
import functools
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from run_helpers import ROOT, assert_equal_nested, checkpoint_state, tiny_config
from weights_helpers import payload_checkpoint

from zoo.tasks.run_folder import LOCK_NAME  # noqa: E402
from zoo.training import main, run  # noqa: E402

DIGITS = ROOT / "configs" / "digits_seresnet.yaml"
# 40 digits in batches of 8: 5 training batches an epoch, so a checkpoint can fall mid-epoch
FIVE_BATCHES = {"max_steps": -1, "limit_train_batches": 1.0}


def _config(out: Path, **trainer) -> Path:
    """The digits config on 40 images with a one-block-per-stage SE-ResNet whose dropout draws from
    the random stream (so a resume that restored it wrongly shows)."""
    path = tiny_config(DIGITS, out, **{**FIVE_BATCHES, **trainer})
    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["args"]["limit"] = 40
    cfg["model"]["kwargs"].update(layers=[1, 1, 1, 1], drop_rate=0.2)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _metrics_rows(out: Path) -> list[dict]:
    with open(out / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    return payload_checkpoint(path, marker, state_dict={})


@pytest.fixture
def http_folder(tmp_path):
    """A folder served over http on 127.0.0.1 (the test's own server, nothing leaves the machine)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_no_checkpoint_path_runs_pickled_code(tmp_path, monkeypatch, capsys, http_folder):
    """Local file, 'last', and a URL, with the environment asking torch to unpickle everything."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv("ZOO_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    cfg = _config(out)
    served, url = http_folder
    _evil_checkpoint(served / "evil.ckpt", marker)
    cases = {"local": str(_evil_checkpoint(tmp_path / "evil.ckpt", marker)), "url": f"{url}/evil.ckpt"}
    _evil_checkpoint(out / "checkpoints" / "last.ckpt", marker)
    cases["last"] = "last"
    for case, ckpt in cases.items():
        for steps in ("fit", "test"):
            assert main([steps, "--config", str(cfg), "--ckpt_path", ckpt]) == 2, case
            err = capsys.readouterr().err
            assert "refusing to load" in err and "arbitrary code" in err, (case, err)
            assert "Traceback" not in err
            assert not marker.exists(), f"{case} {steps}: the pickled payload ran"


@pytest.mark.parametrize("kind", ["empty string", "missing", "folder", "empty file", "truncated", "weights only",
                                  "no last yet"])
def test_bad_ckpt_path_is_one_sentence(kind, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = _config(out)
    truncated = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    (tmp_path / "empty.ckpt").write_bytes(b"")
    torch.save({"w": torch.zeros(3)}, tmp_path / "weights.pth")
    value, expect = {
        "empty string": ("", "is empty"),
        "missing": (str(tmp_path / "nope.ckpt"), "does not exist"),
        "folder": (str(tmp_path), "is a folder"),
        "empty file": (str(tmp_path / "empty.ckpt"), "empty file"),
        "truncated": (str(truncated), "truncated"),
        "weights only": (str(tmp_path / "weights.pth"), "model.pretrained"),
        "no last yet": ("last", "leave --ckpt_path out"),
    }[kind]
    assert main(["--config", str(cfg), "--ckpt_path", value]) == 2
    err = capsys.readouterr().err
    assert expect in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_last_ckpt_is_the_final_state_and_metrics_have_every_step_once(tmp_path):
    """7 steps (an epoch and two batches): last.ckpt at step 7 whatever the monitored metric did."""
    out = tmp_path / "run"
    cli = run(["fit", "--config", str(_config(out, max_steps=7, max_epochs=3))])
    assert cli.trainer.global_step == 7
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 7
    steps = [r["step"] for r in _metrics_rows(out) if r.get("train/loss_step")]
    assert len(steps) == len(set(steps)) == 7


class _Crash(RuntimeError):
    pass


def test_killed_run_resumes_bit_for_bit(tmp_path, monkeypatch):
    """Straight 2 epochs (10 steps) == a run that dies at step 4, resumes from last.ckpt (step 3,
    mid-epoch), dies again at step 8 (last.ckpt: step 6, the second epoch), and resumes to the end:
    weights, optimizer, EMA and metrics.csv row for row. Checkpoints every 3 steps and at epoch ends."""
    from zoo.tasks import ClassificationTask

    args = ["--checkpoint_every_n_steps", "3", "--task.args", '{"ema_decay": 0.9}']
    straight = tmp_path / "straight"
    run(["fit", "--config", str(_config(straight, max_epochs=2))] + args)

    resumed = tmp_path / "resumed"
    cfg = _config(resumed, max_epochs=2)
    real_step = ClassificationTask.training_step
    for crash_step, resume_from in ((4, None), (8, "last")):
        def crashing(self, batch, batch_idx, crash_step=crash_step):
            if self.global_step == crash_step:
                raise _Crash(f"killed at step {crash_step}")
            return real_step(self, batch, batch_idx)

        monkeypatch.setattr(ClassificationTask, "training_step", crashing)
        with pytest.raises(_Crash):
            run(["fit", "--config", str(cfg)] + args + (["--ckpt_path", resume_from] if resume_from else []))
        assert not (resumed / LOCK_NAME).exists()  # released on the way out
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    monkeypatch.setattr(ClassificationTask, "training_step", real_step)
    run(["fit", "--config", str(cfg), "--ckpt_path", "last"] + args)

    sd_a, opt_a = checkpoint_state(straight / "checkpoints" / "last.ckpt")
    sd_b, opt_b = checkpoint_state(resumed / "checkpoints" / "last.ckpt")
    assert_equal_nested(sd_a, sd_b, "state_dict")
    assert_equal_nested(opt_a, opt_b, "optimizer")
    assert int(sd_b["ema.num_updates"]) == 10
    # every row once and equal, except the training loss averaged over an interrupted epoch: Lightning
    # does not checkpoint its epoch accumulators, so that mean covers the batches after the resume
    rows_a, rows_b = _metrics_rows(straight), _metrics_rows(resumed)
    assert [{k: v for k, v in r.items() if not k.endswith("_epoch")} for r in rows_a] == \
        [{k: v for k, v in r.items() if not k.endswith("_epoch")} for r in rows_b]
    assert [bool(r["train/loss_epoch"]) for r in rows_a] == [bool(r["train/loss_epoch"]) for r in rows_b]


def test_resumed_order_does_not_depend_on_workers():
    """The batches of an epoch, started at batch 2, are the straight epoch's batches 2.. whatever
    the number of workers (each sample's augmentation runs under its own seed)."""
    from zoo.data import DigitsDataModule
    from zoo.data.sampling import ResumableLoader

    data = DigitsDataModule(limit=40, batch_size=8, max_shift=2)
    data.setup("fit")
    batches = {}
    for workers in (0, 2):
        loader = ResumableLoader(data.train_dataset(), 8, drop_last=True, num_workers=workers, seed=3)
        loader.load_state_dict({"epoch": 1, "batches": 0, "epoch_finished": False})
        full = [x for x, _ in loader]
        loader.load_state_dict({"epoch": 1, "batches": 2, "epoch_finished": False})
        batches[workers] = (full, [x for x, _ in loader])
    (full0, tail0), (full2, tail2) = batches[0], batches[2]
    assert len(full0) == 5 and len(tail0) == 3
    for a, b in zip(full0, full2):
        assert torch.equal(a, b)
    for a, b in zip(full0[2:], tail2):
        assert torch.equal(a, b)
    loader.load_state_dict({"epoch": 0, "batches": 5, "epoch_finished": True})
    assert loader.sampler.epoch == 1  # a finished epoch resumes at the next one


def test_second_live_run_in_the_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = _config(out)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / LOCK_NAME).write_text(f'{{"pid": {holder.pid}, "host": "{os.uname().nodename}", "started": "now"}}')
        assert main(["--config", str(cfg)]) == 2
        err = capsys.readouterr().err
        assert f"pid {holder.pid}" in err and "another output_dir" in err
    finally:
        holder.kill()
        holder.wait()
    # the owner is gone: its lock is stale and the next run takes it; a killed write's temp file goes
    stale_tmp = out / "checkpoints" / ".last.ckpt.abc123.tmp"
    stale_tmp.parent.mkdir(parents=True, exist_ok=True)
    stale_tmp.write_bytes(b"x" * 100)
    assert main(["fit", "--config", str(cfg)]) == 0
    assert not stale_tmp.exists() and not (out / LOCK_NAME).exists()


def test_full_disk_is_named(tmp_path, monkeypatch):
    """torch.save's C++ writer says 'basic_ios::clear: iostream error' on a full disk; the error says so."""
    import errno

    from zoo import files

    def failing_write(tmp):
        Path(tmp).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . basic_ios::clear: iostream error")

    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: type("U", (), {"free": 1 << 20})())
    with pytest.raises(OSError) as info:
        files.atomic_write(tmp_path / "x.ckpt", failing_write)
    assert info.value.errno == errno.ENOSPC and "no space left on device" in str(info.value)
    assert not list(tmp_path.iterdir())  # the temporary file is gone too


def test_checkpoint_saves_to_and_reads_from_an_fsspec_path():
    """Lightning's save writes fsspec paths (memory:// here, s3:// alike) with the zoo's digest; the read
    checks it, takes a rewritten file rather than an earlier copy, and refuses a tampered one."""
    import fsspec

    from zoo.checkpoint import DIGEST_KEY, CheckpointError
    from zoo.tasks.checkpointing import SafeCheckpointIO

    io, path = SafeCheckpointIO(), "memory://zoo-tests/run/checkpoints/last.ckpt"
    try:
        for step in (1, 2):
            state = {"state_dict": {"w": torch.full((3,), float(step))}, "global_step": step}
            io.save_checkpoint(state, path)
            with fsspec.open(path, "rb") as fh:
                assert DIGEST_KEY in torch.load(fh, weights_only=True)
            assert_equal_nested(io.load_checkpoint(path), state)
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 3}, path)
        with fsspec.open(path, "rb") as fh:
            tampered = torch.load(fh, weights_only=True)
        tampered["state_dict"]["w"] += 1
        with fsspec.open(path, "wb") as fh:
            torch.save(tampered, fh)
        with pytest.raises(CheckpointError):
            io.load_checkpoint(path)
    finally:
        fsspec.filesystem("memory").rm("/zoo-tests", recursive=True)


def test_checkpoint_killed_while_moved_from_another_file_system_keeps_the_last_one(tmp_path, monkeypatch):
    """Lightning's local write goes through the system temp folder; from a tmpfs /tmp its move is a copy over
    the target. A kill during that copy must leave the previous checkpoint whole."""
    from fsspec.implementations import local

    from zoo.tasks.checkpointing import SafeCheckpointIO

    io, path = SafeCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    first = {"state_dict": {"w": torch.ones(1000)}, "global_step": 1}
    io.save_checkpoint(first, path)

    def cross_device_move_killed(src, dst):  # shutil.move after EXDEV: a copy into dst, cut short
        Path(dst).write_bytes(Path(src).read_bytes()[:100])
        raise KeyboardInterrupt

    monkeypatch.setattr(local.shutil, "move", cross_device_move_killed)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "global_step": 2}, path)
    assert_equal_nested(io.load_checkpoint(str(path)), first)
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left beside it


def test_batch_counts_keep_their_type(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(DIGITS), "--trainer.limit_val_batches", "1", "--trainer.limit_train_batches", "0.5",
              "--print_config"])
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["limit_val_batches"] == 1 and isinstance(trainer["limit_val_batches"], int)
    assert trainer["limit_train_batches"] == 0.5


def test_ddp_kill_and_resume_equals_straight(tmp_path):
    """2 gloo processes: a SIGKILL at whatever step the run has reached, then --ckpt_path last, ends
    with the straight run's weights and optimizer state, bit for bit."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ddp = ["--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
           "--checkpoint_every_n_steps", "1", "--data.args.limit", "80"]

    def launch(out: Path, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(_config(out, max_epochs=2))] + ddp + list(extra)
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                                cwd=tmp_path, start_new_session=True)

    straight = launch(tmp_path / "straight")
    log = straight.communicate(timeout=300)[0]
    assert straight.returncode == 0, log[-3000:]

    killed_out = tmp_path / "killed"
    killed = launch(killed_out)
    last = killed_out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.is_file() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.05)
    time.sleep(1.5)  # a few more steps: the kill lands wherever the run has got to
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    step = torch.load(last, weights_only=True)["global_step"]
    assert 1 <= step < 10 and (killed_out / LOCK_NAME).is_file()  # killed mid-run, its lock left stale
    resumed = launch(killed_out, "--ckpt_path", "last")
    log = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, log[-3000:]
    sd_a, opt_a = checkpoint_state(tmp_path / "straight" / "checkpoints" / "last.ckpt")
    sd_b, opt_b = checkpoint_state(last)
    assert_equal_nested(sd_a, sd_b, f"state_dict (killed after step {step})")
    assert_equal_nested(opt_a, opt_b, "optimizer")
