"""One name per kernel op family (issue 19): ``kernels/<op>.py``, its Triton kernels ``kernels/_triton_<op>.py``,
its tests ``tests/kernels/test_<op>.py`` and, where it has one, its benchmark ``benchmarks/<op>.py``; and no
name the ``kernels`` package exports hides one of its modules (``kernels.<op>`` is always the module, so a
plain ``from zoo.kernels import <op>`` works). Each check names the files or attributes that break the rule."""
from __future__ import annotations

import ast
import types
from pathlib import Path

from zoo import kernels

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "kernels"
MODULES = {path.stem for path in KERNELS.glob("*.py") if path.stem != "__init__"}

# helpers shared by several kernels/_triton_*.py modules, not the kernels of one op family
SHARED_TRITON_MODULES = {"_triton_common"}
# test files that test no single op module: test_compile.py traces the ops of whole models under
# torch.compile; test_naming.py is this file, about the names of all of them
CROSS_CUTTING_TESTS = {"test_compile", "test_naming"}
# benchmarks that use one op family but are not its benchmark: int_reference_cpu.py times the CPU reference
# of kernels.int_gemm against an earlier git revision of it (benchmarks/int_gemm.py is the op's benchmark)
NOT_AN_OP_BENCHMARK = {"int_reference_cpu"}


def test_no_exported_name_hides_a_kernels_module():
    names = set(vars(kernels)) | set(kernels.__all__)
    offenders = sorted(name for name in names & MODULES if not isinstance(getattr(kernels, name), types.ModuleType))
    assert not offenders, (f"kernels.{offenders[0]} is not the module kernels/{offenders[0]}.py: rename the "
                           f"function or the module (all: {offenders})")


def test_every_triton_module_is_named_after_its_op_module():
    offenders = sorted(f"kernels/{name}.py" for name in MODULES
                       if name.startswith("_triton_") and name not in SHARED_TRITON_MODULES
                       and name.removeprefix("_triton_") not in MODULES)
    assert not offenders, f"no kernels/<op>.py for: {offenders}"


def test_every_kernel_test_file_is_named_after_an_op_module():
    offenders = sorted(f"tests/kernels/{path.name}" for path in (ROOT / "tests" / "kernels").glob("test_*.py")
                       if path.stem not in CROSS_CUTTING_TESTS and path.stem.removeprefix("test_") not in MODULES)
    assert not offenders, f"no kernels/<op>.py for: {offenders}"


def _op_module_of_export() -> dict[str, str]:
    """Each name kernels/__init__.py imports from one of its op modules -> that module."""
    tree = ast.parse((KERNELS / "__init__.py").read_text())
    return {alias.asname or alias.name: node.module for node in tree.body
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
            for alias in node.names}


def _op_families(path: Path, exports: dict[str, str]) -> set[str]:
    """The op modules a benchmark uses: ``from zoo.kernels.<op> import ...`` / ``import zoo.kernels.<op>``, and
    ``kernels.<name>`` for a name the package imports from ``kernels/<op>.py``."""
    used = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("zoo.kernels."):
            used.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            used |= {alias.name.split(".")[2] for alias in node.names if alias.name.startswith("zoo.kernels.")}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "kernels":
            used.add(exports.get(node.attr, ""))
    return used & MODULES - {"dispatch"}


def test_a_benchmark_of_one_op_family_is_named_after_it():
    """A benchmark whose kernel calls all go to one op module is that module's benchmark: benchmarks/<op>.py.
    (Benchmarks of several families, e.g. the channel gate's pool, excitation and rescale, or of blocks
    alone, are named after what they measure.)"""
    exports = _op_module_of_export()
    offenders = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        families = _op_families(path, exports)
        if len(families) == 1 and path.stem not in families | NOT_AN_OP_BENCHMARK:
            offenders.append(f"benchmarks/{path.name} measures kernels/{families.pop()}.py")
    assert not offenders, offenders
