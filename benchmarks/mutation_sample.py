"""Sampled mutation testing of the model-facing modules (TESTING.md).

``mutmut run`` at the repository root mutates the three pure modules fully (pyproject's
``[tool.mutmut]``). The engine, executors and adapters make ~1500 mutants whose tests run whole
(tiny) generations, too many to check one by one on a CPU; this script checks a fixed random
sample of them with mutmut itself:

1. copy ``stagevar/``, ``tests/`` and a pyproject into a work directory (default
   ``mutants-sample/``, git-ignored), from the working tree or, with ``--ref``, from a git
   commit;
2. in that directory, let mutmut write every mutant of ``--modules`` (its own generator);
3. draw ``--n`` mutant names with ``random.Random(--seed)`` from the sorted list;
4. ``mutmut run NAME ...`` on those names only, each mutant against the tests of ``--tests``
   that execute the mutated function (mutmut's per-function test selection), ``pytest -x``;
5. print killed / total and the timeouts per module, and ``mutmut show`` of every survivor.

Run it from the repository root, with ``OMP_NUM_THREADS=1``::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/mutation_sample.py --n 150 --seed 0

A rerun on the same work directory reuses mutmut's cached test timings; ``--fresh`` deletes it first.

``--planted`` checks the drawn (or ``--names``) mutants without ``mutmut run``: each one is written
into the work directory's plain copy of the package (:func:`plant`), ``pytest -x`` runs over
``--tests`` in a new interpreter, and the file is put back. ``mutmut run`` reaches a mutant through a
trampoline and forks its workers from a process that has already imported the package: a function
called at import time (the presets are built then) runs unmutated in every worker, and code that
reads its own call stack (warnings attributed to the user's line) sees the trampoline's frames.
Planted, the mutant is the code, as a one-line bug would be.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MODULES = ["stagevar/engine.py", "stagevar/executors.py", "stagevar/adapters/var.py", "stagevar/adapters/infinity.py"]
TESTS = ["tests/test_engine.py", "tests/test_executors.py", "tests/test_api.py", "tests/test_adapter_suite.py",
         "tests/test_infinity.py", "tests/test_syncfree.py", "tests/test_report.py", "tests/test_var.py"]

PYPROJECT = """\
[tool.pytest.ini_options]
testpaths = ["tests"]
markers = ["cuda: needs a CUDA device (skipped without one)", "slow: seconds rather than milliseconds"]

[tool.mutmut]
source_paths = ["stagevar"]
only_mutate = {modules}
pytest_add_cli_args = ["-p", "no:cacheprovider", "--hypothesis-seed=0", {deselect}]
pytest_add_cli_args_test_selection = {tests}
also_copy = {also}
"""

# tests that read the call stack, which mutmut's trampolines deepen (they pass unmutated, fail under mutmut)
DESELECT = ["tests/test_api.py::test_warnings_point_at_the_users_line"]

# what the tests read besides the package and themselves (scripts they import, docs they check)
ALSO = ["benchmarks", "examples", "README.md", "BENCHMARKS.md", "TESTING.md", "LICENSE", ".ci"]

STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 36: "timeout", -24: "timeout",
          24: "timeout", 152: "timeout", 255: "timeout", None: "not checked"}


def prepare(work: Path, ref: str | None, modules: list, tests: list) -> None:
    work.mkdir(parents=True, exist_ok=True)
    paths = ["stagevar", "tests"] + [a for a in ALSO if (ROOT / a).exists()]
    for sub in paths:
        shutil.rmtree(work / sub, ignore_errors=True) if (work / sub).is_dir() else (work / sub).unlink(missing_ok=True)
    if ref is None:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for sub in paths:
            src = ROOT / sub
            shutil.copytree(src, work / sub, ignore=ignore) if src.is_dir() else shutil.copy2(src, work / sub)
    else:
        blob = subprocess.run(["git", "archive", "--format=tar", ref, *paths], cwd=ROOT,
                              check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(work)
    tests = [t for t in tests if (work / t.split("::")[0]).exists()]  # files, folders or test ids
    if not tests:
        raise SystemExit(f"none of the test paths exist in {work}")
    also = [a for a in ALSO if (work / a).exists()]
    (work / "pyproject.toml").write_text(PYPROJECT.format(modules=json.dumps(modules), tests=json.dumps(tests),
                                                          also=json.dumps(also),
                                                          deselect=", ".join(f'"--deselect", "{d}"' for d in DESELECT)))


def generate(work: Path) -> list:
    """Let mutmut write the mutants (its generator, in-process) and return every mutant name."""
    code = ("from mutmut.__main__ import create_mutants\n"
            "from mutmut.utils.file_utils import copy_src_dir, copy_also_copy_files, setup_source_paths\n"
            "import os\nos.makedirs('mutants', exist_ok=True)\n"
            "copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(1)\n")
    subprocess.run([sys.executable, "-c", code], cwd=work, check=True)
    return sorted(n for meta in (work / "mutants" / "stagevar").rglob("*.meta")
                  for n in json.loads(meta.read_text())["exit_code_by_key"])


def results(work: Path) -> dict:
    out = {}
    for meta in (work / "mutants" / "stagevar").rglob("*.meta"):
        out.update(json.loads(meta.read_text())["exit_code_by_key"])
    return out


def planted(work: Path, mutmut: str, names: list, tests: list, env: dict, log, timeout: int, out: dict) -> None:
    """Each mutant written into the work directory's plain copy of the package (``mutmut apply``), then
    ``pytest -x`` over ``tests`` in a new interpreter, then the file put back; ``out[name]``: its status
    code (filled as it goes, so an interrupted run still reports what it checked)."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--hypothesis-seed=0", *tests]
    env = dict(env, PYTHONPATH=".", PYTHONDONTWRITEBYTECODE="1")  # the work directory's package, never a stale .pyc
    log.write("\n=== unmutated\n")
    log.flush()
    if subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT).returncode:
        raise SystemExit(f"the tests fail on the unmutated copy; see {work / 'mutmut.log'}")
    for name in names:
        source = work / (module_of(name).replace(".", "/") + ".py")
        pristine = source.read_bytes()
        log.write(f"\n=== {name}\n")
        log.flush()
        try:
            plant(work, mutmut, name, source)
            rc = subprocess.run(cmd, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 24
        finally:
            source.write_bytes(pristine)
        # pytest: 0 all passed, 5 none collected; 1 a test failed, 4 the import (conftest's) failed: killed
        out[name] = rc if rc == 24 else {0: 0, 5: 33}.get(rc, 1)
        print(f"{STATUS.get(out[name], 'suspicious'):10s} {name}", flush=True)


def function_of(name: str) -> tuple:
    """``(module, class or None, function)`` of a mutant name (``pkg.mod.x_func__mutmut_3``,
    ``pkg.mod.x\u01c1Class\u01c1method__mutmut_3``)."""
    module = module_of(name)
    rest = name[len(module) + 2:].rsplit("__mutmut_", 1)[0]
    if rest.startswith("\u01c1"):
        cls, func = rest[1:].split("\u01c1", 1)
        return module, cls, func
    return module, None, rest[1:]


def plant(work: Path, mutmut: str, name: str, source: Path) -> None:
    """Write mutant ``name`` into ``source``, in the function it belongs to.

    ``mutmut apply`` (3.8.1) writes a method's mutant over the first function of that name in the
    file: a mutant of ``GraphExecutor.__init__`` lands in ``Bindings.__init__``. Here the function
    is found with ``ast`` (its class, then its name), and ``mutmut show``'s diff, which is relative to
    the function's text, is applied there; every removed and context line must match, or it stops."""
    import ast

    _, cls, func = function_of(name)
    text = source.read_text()
    tree = ast.parse(text)
    body = tree.body
    if cls is not None:
        owners = [n for n in body if isinstance(n, ast.ClassDef) and n.name == cls]
        if len(owners) != 1:
            raise SystemExit(f"{name}: {len(owners)} top-level classes {cls!r} in {source}")
        body = owners[0].body
    defs = [n for n in body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == func]
    if len(defs) != 1:
        raise SystemExit(f"{name}: {len(defs)} functions {func!r} in {'class ' + cls if cls else 'the module'} of {source}")
    node = defs[0]
    lines = text.splitlines(keepends=True)
    start = node.lineno - 1
    indent = lines[start][:len(lines[start]) - len(lines[start].lstrip())]
    diff = subprocess.run([mutmut, "show", name], cwd=work, check=True, capture_output=True, text=True).stdout
    hunks, cur = [], None
    for line in diff.splitlines():
        if line.startswith("@@"):
            cur = [int(line.split()[1][1:].split(",")[0]), []]
            hunks.append(cur)
        elif cur is not None and line[:1] in (" ", "-", "+"):
            cur[1].append(line)

    def shifted(original: str, shown: str):
        """True where ``original`` is ``shown`` under the function's indent, False where it is ``shown``
        itself (a string literal's continuation line keeps its own indentation), None: no match."""
        original = original.rstrip("\n")
        if shown and original == indent + shown:
            return True
        return False if original == shown else None

    for first, hunk in sorted(hunks, key=lambda h: -h[0]):
        old = [h[1:] for h in hunk if h[0] in " -"]
        # line 1 of mutmut's text is the def, or a comment, blank line or decorator above it that the
        # parser attached to the function: the hunk sits at its nominal line or up to 11 lines above
        nominal = start + first - 1
        for at in range(nominal, max(nominal - 12, -1), -1):
            flags = [shifted(o, h) for o, h in zip(lines[at:at + len(old)], old)]
            if len(flags) == len(old) and None not in flags:
                break
        else:
            raise SystemExit(f"{name}: mutmut's diff does not match {source} near line {start + first}")
        out, removed, i = [], [], 0
        for h in hunk:
            if h[0] == "+":  # an added line is indented as the removed line it replaces (else: indented)
                under = removed.pop(0) if removed else True
                out.append((indent if under else "") + h[1:] + "\n")
                continue
            if h[0] == "-":
                removed.append(flags[i])
            else:
                out.append(lines[at + i])
            i += 1
        lines[at:at + len(old)] = out
    source.write_text("".join(lines))


def report(work: Path, mutmut: str, sample: list, res: dict) -> None:
    per = defaultdict(Counter)
    survivors = []
    for name in sample:
        status = STATUS.get(res.get(name), "suspicious")
        per[module_of(name)][status] += 1
        if status in ("survived", "no tests", "suspicious"):
            survivors.append((name, status))
    print("\nmodule                      killed / total   timeout  survived  no-tests  other")
    for mod in sorted(per):
        c = per[mod]
        total = sum(c.values())
        other = total - c["killed"] - c["timeout"] - c["survived"] - c["no tests"]
        print(f"{mod:28s} {c['killed']:6d} / {total:<6d}   {c['timeout']:7d}  {c['survived']:8d}  {c['no tests']:8d}  {other:5d}")
    for name, status in survivors:
        shown = subprocess.run([mutmut, "show", name], cwd=work, capture_output=True, text=True).stdout
        print(f"\n### {status}: {name}\n{shown}")


def module_of(name: str) -> str:
    return name.split(".x_")[0].split(".x\u01c1")[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=150, help="mutants to check (at most 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=str(ROOT / "mutants-sample"))
    ap.add_argument("--ref", default=None, help="copy stagevar/ and tests/ from this git commit, not the working tree")
    ap.add_argument("--fresh", action="store_true", help="delete the work directory first")
    ap.add_argument("--max-children", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=3600, help="seconds for the whole mutmut run (for each mutant with --planted)")
    ap.add_argument("--names", nargs="*", help="check these mutant names instead of a sample")
    ap.add_argument("--modules", nargs="+", default=MODULES, help="files to mutate (default: the four above)")
    ap.add_argument("--tests", nargs="+", default=TESTS,
                    help="test files mutmut may select from (default: the eight above; `tests` for all)")
    ap.add_argument("--planted", action="store_true",
                    help="write each mutant into the plain source and run all of --tests in a new interpreter, "
                         "instead of `mutmut run`")
    ap.add_argument("--per-module", type=int, default=None,
                    help="draw this many mutants from each module instead of --n from all (no 200 cap)")
    args = ap.parse_args(argv)
    work = Path(args.work)
    if args.fresh:
        shutil.rmtree(work, ignore_errors=True)
    prepare(work, args.ref, args.modules, args.tests)
    every = generate(work)
    if args.names:
        sample = args.names
    elif args.per_module:
        by_module = defaultdict(list)
        for name in every:
            by_module[module_of(name)].append(name)
        rng = random.Random(args.seed)
        sample = sorted(n for mod in sorted(by_module)
                        for n in rng.sample(by_module[mod], min(args.per_module, len(by_module[mod]))))
    else:
        sample = sorted(random.Random(args.seed).sample(every, min(args.n, 200, len(every))))
    print(f"{len(every)} mutants of {len(args.modules)} modules; checking {len(sample)} (seed {args.seed})", flush=True)
    (work / "sample.txt").write_text("\n".join(sample) + "\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    mutmut = shutil.which("mutmut") or "mutmut"
    log = open(work / "mutmut.log", "w")  # mutmut's (or pytest's) own output (its stats run's failures, say)
    res: dict = {}
    try:
        if args.planted:
            planted(work, mutmut, sample, args.tests, env, log, args.timeout, res)
        else:
            subprocess.run(["timeout", str(args.timeout), mutmut, "run", "--max-children", str(args.max_children),
                            *sample], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    finally:  # the score so far, even after Ctrl-C
        log.close()
        report(work, mutmut, sample, res if args.planted else results(work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
