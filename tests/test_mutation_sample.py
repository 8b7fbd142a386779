"""benchmarks/mutation_sample.py --planted writes a mutant into the function it belongs to (mutmut
3.8.1's own `apply` writes a method's mutant over the first function of that name in the file)."""
import os
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import mutation_sample as ms  # noqa: E402

SOURCE = '''\
class First:
    def __init__(self, x):
        self.x = x


# a comment the parser attaches to the next function
class Second:
    def __init__(self, y):
        """Two lines,
        the second one indented as written."""
        self.y = y + 1
        self.z = "text"


def helper(v):
    return v * 2
'''


def _shown(body):
    return "# name: not checked\n--- pkg/mod.py\n+++ pkg/mod.py\n" + body


def _plant(tmp_path, monkeypatch, name, diff):
    src = tmp_path / "mod.py"
    src.write_text(SOURCE)
    monkeypatch.setattr(ms.subprocess, "run", lambda *a, **k: types.SimpleNamespace(stdout=_shown(diff)))
    ms.plant(tmp_path, "mutmut", name, src)
    return src.read_text()


def test_names_split_into_module_class_and_function():
    assert ms.function_of("pkg.mod.x\u01c1Second\u01c1__init____mutmut_4") == ("pkg.mod", "Second", "__init__")
    assert ms.function_of("pkg.mod.x_helper__mutmut_12") == ("pkg.mod", None, "helper")
    assert ms.function_of("pkg.mod.x__own__mutmut_1") == ("pkg.mod", None, "_own")


def test_a_methods_mutant_lands_in_its_own_class_not_the_first_of_that_name(tmp_path, monkeypatch):
    diff = ('@@ -1,5 +1,5 @@\n def __init__(self, y):\n     """Two lines,\n'
            '         the second one indented as written."""\n-    self.y = y + 1\n+    self.y = y - 1\n'
            '     self.z = "text"\n')
    got = _plant(tmp_path, monkeypatch, "pkg.mod.x\u01c1Second\u01c1__init____mutmut_4", diff)
    assert got == SOURCE.replace("self.y = y + 1", "self.y = y - 1")


def test_a_top_level_mutant_and_a_diff_counted_from_a_leading_comment(tmp_path, monkeypatch):
    got = _plant(tmp_path, monkeypatch, "pkg.mod.x_helper__mutmut_1", "@@ -1,2 +1,2 @@\n def helper(v):\n-    return v * 2\n+    return v / 2\n")
    assert got == SOURCE.replace("v * 2", "v / 2")
    # a hunk numbered from lines above the def (mutmut counts from a comment or decorator its parser
    # attached to the function): found at the nearest matching line above the nominal one
    diff = '@@ -6,2 +6,2 @@\n     self.y = y + 1\n-    self.z = "text"\n+    self.z = "XXtextXX"\n'
    got = _plant(tmp_path, monkeypatch, "pkg.mod.x\u01c1Second\u01c1__init____mutmut_9", diff)
    assert got == SOURCE.replace('"text"', '"XXtextXX"')


def test_a_diff_that_does_not_match_the_function_stops(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="does not match"):
        _plant(tmp_path, monkeypatch, "pkg.mod.x\u01c1First\u01c1__init____mutmut_1",
               "@@ -1,2 +1,2 @@\n def __init__(self, x):\n-    self.x = x + 5\n+    self.x = x - 5\n")
    with pytest.raises(SystemExit, match="0 top-level classes 'Third'"):
        _plant(tmp_path, monkeypatch, "pkg.mod.x\u01c1Third\u01c1__init____mutmut_1", "")
    assert (tmp_path / "mod.py").read_text() == SOURCE  # nothing written


def test_the_real_mutmut_show_diff_of_a_method_is_applied_in_place(tmp_path):
    """With mutmut installed (the dev extra): its own generator and `show` on a two-class file."""
    pytest.importorskip("mutmut")
    import shutil

    mutmut = shutil.which("mutmut") or pytest.skip("no mutmut command")
    pkg = tmp_path / "stagevar"  # the name generate() reads mutants under
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text(SOURCE)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_mod.py").write_text("from stagevar.mod import Second\n\ndef test_it():\n    assert Second(1).y == 2\n")
    (tmp_path / "pyproject.toml").write_text('[tool.mutmut]\nsource_paths = ["stagevar"]\n')
    names = ms.generate(tmp_path)
    second = [n for n in names if "\u01c1Second\u01c1__init__" in n]
    assert second
    src = pkg / "mod.py"
    for name in second:
        ms.plant(tmp_path, mutmut, name, src)
        got = src.read_text()
        assert got != SOURCE and got.split("class Second")[0] == SOURCE.split("class Second")[0], name
        compile(got, "mod.py", "exec")
        src.write_text(SOURCE)
