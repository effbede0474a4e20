"""Run timm's own ``tests/test_models.py`` on zoo's image classifiers, every assertion as timm wrote it.

    python tools/timm_suite.py                      # timm's tests for the installed timm version
    python tools/timm_suite.py --all                # every zoo image classifier, not one per family
    python tools/timm_suite.py --timm-tests DIR     # a timm checkout's tests/ folder instead

timm's test file comes from the source distribution of the installed timm version (``pip download``,
kept under the zoo's cache folder) or from ``--timm-tests``; ``tools/timm_suite/conftest.py`` points
its model listing and creation at ``zoo.create``. TorchScript tests are left out (the zoo's models
are traced, compiled and exported, not scripted), and so are those that download release weights.
Prints one line per timm test function (passed / failed / skipped) and exits 1 on any failure.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# left out: TorchScript (the zoo's models are traced, compiled and exported, not scripted) and the tests
# that download release weights (no network at test time)
SKIP = "torchscript or test_model_load_pretrained or test_model_features_pretrained"


def timm_tests(cache: Path) -> Path:
    """timm's ``test_models.py`` for the installed version, from its sdist (downloaded once)."""
    import timm

    from zoo.files import atomic_write

    target = cache / f"timm-{timm.__version__}" / "test_models.py"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
               f"timm=={timm.__version__}", "-d", tmp]
        if subprocess.run(cmd).returncode != 0:
            raise SystemExit(f"could not download timm {timm.__version__}'s source distribution; pass "
                             "--timm-tests <a timm checkout>/tests")
        (archive,) = Path(tmp).glob("timm-*.tar.gz")
        with tarfile.open(archive) as tar:
            member = tar.getmember(f"timm-{timm.__version__}/tests/test_models.py")
            data = tar.extractfile(member).read()
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(data))
    return target


def summarize(report: Path) -> tuple[Counter, list[str]]:
    """Outcomes per timm test function, and the failures' first lines."""
    counts: Counter = Counter()
    failures = []
    for case in ET.parse(report).getroot().iter("testcase"):
        test = case.get("name", "").split("[")[0]
        failed = case.find("failure") if case.find("failure") is not None else case.find("error")
        if failed is not None:
            counts[(test, "failed")] += 1
            message = (failed.get("message") or "").splitlines()
            failures.append(f"FAILED {case.get('name')}: {message[0][:200] if message else ''}")
        elif case.find("skipped") is not None:
            counts[(test, "skipped")] += 1
        else:
            counts[(test, "passed")] += 1
    return counts, failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timm-tests", type=Path, default=None, help="a timm checkout's tests/ folder")
    parser.add_argument("-k", default=None, help="further pytest -k selection")
    parser.add_argument("--all", action="store_true", help="every zoo image classifier (default: one per family)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from zoo.files import zoo_cache_dir

    source = args.timm_tests / "test_models.py" if args.timm_tests else timm_tests(zoo_cache_dir("timm-tests"))
    if not source.exists():
        raise SystemExit(f"{source} does not exist")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(HERE / "timm_suite" / "conftest.py", Path(tmp) / "conftest.py")
        shutil.copy(source, Path(tmp) / "test_models.py")
        report = Path(tmp) / "report.xml"
        selection = f"not ({SKIP})" + (f" and ({args.k})" if args.k else "")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               "ZOO_TIMM_SUITE": "all" if args.all else "one-per-family"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-m", "",
               "-k", selection, f"--junitxml={report}", "--rootdir", tmp, str(Path(tmp) / "test_models.py")]
        subprocess.run(cmd, cwd=tmp, env=env, stdout=subprocess.DEVNULL)
        if not report.exists():
            raise SystemExit("pytest wrote no report: run the command above by hand to see why")
        counts, failures = summarize(report)
    tests = sorted({test for test, _ in counts})
    width = max(map(len, tests), default=4)
    print(f"{'timm test':<{width}}  passed  failed  skipped")
    for test in tests:
        print(f"{test:<{width}}  {counts[(test, 'passed')]:>6}  {counts[(test, 'failed')]:>6}  "
              f"{counts[(test, 'skipped')]:>7}")
    totals = Counter()
    for (_, outcome), n in counts.items():
        totals[outcome] += n
    print(f"total: {totals['passed']} passed, {totals['failed']} failed, {totals['skipped']} skipped (tests written "
          "for timm's own models); TorchScript and weight downloads left out")
    for line in failures:
        print(line)
    return 1 if totals["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
