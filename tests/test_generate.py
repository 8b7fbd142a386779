"""stagevar generate: fixed batches with derived seeds, a manifest that resumes and refuses
another run's folder, atomic image writes, and the same files from one process or two ranks."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from stagevar.tools import cli, generate as gen
from stagevar.tools.generate import MANIFEST, batch_seed, generate, plan_batches
from stagevar.tools.runner import MODEL_DEFAULT
from stagevar.models import build_reference, reference_var

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITEMS = [0, 1, 2, 3, 4]  # B = 2: batches 0 (items 0, 1), 1 (2, 3), 2 (4)
CLI = ["generate", "--model", "var", "--shape", "tiny", "--classes", *map(str, ITEMS), "--batch", "2", "--quiet"]


@pytest.fixture(scope="module")
def ref():
    return build_reference("var", "tiny")


def _run(ref, out, **kw):
    kw = {"batch": 2, "call_kwargs": dict(ref.call_kwargs, top_k=0, top_p=0.0), "description": ref.description, **kw}
    return generate(ref.model, kw.pop("items", ITEMS), str(out), **kw)


def _pixels(folder):
    return {f: np.asarray(Image.open(os.path.join(folder, f))) for f in sorted(os.listdir(folder)) if f.endswith(".png")}


def _mtimes(folder):
    return {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in os.listdir(folder) if f.endswith(".png")}


def _subprocess(args, **env):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, **env)
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_batches_and_seeds_follow_the_documented_rule():
    batches = plan_batches(num_items=3, per_item=2, batch=4, seed=7)
    assert [b.k for b in batches] == [0, 1]
    assert [b.g_seed for b in batches] == [7 * 1_000_003, 7 * 1_000_003 + 1]
    assert batches[0].samples == ((0, 0), (0, 1), (1, 0), (1, 1)) and batches[1].samples == ((2, 0), (2, 1))
    assert batches[1].files == ("00002_000.png", "00002_001.png")
    assert len({batch_seed(s, k) for s in range(3) for k in range(50)}) == 150


def test_one_process_and_two_torchrun_ranks_write_the_same_files(tmp_path):
    """The real CLI, one process and ``torchrun --nproc-per-node 2`` (gloo): same files, same pixels."""
    one, two = tmp_path / "one", tmp_path / "two"
    _subprocess(["-m", "stagevar", *CLI, "--out", str(one)])
    done = _subprocess(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "stagevar", *CLI,
                        "--out", str(two)])
    assert "over 2 rank(s)" in done.stdout
    a, b = _pixels(one), _pixels(two)
    assert sorted(a) == sorted(b) == [f"0000{i}_000.png" for i in ITEMS]
    for f in a:
        assert np.array_equal(a[f], b[f]), f
    m1, m2 = (json.loads((d / MANIFEST).read_text()) for d in (one, two))
    assert m1["complete"] and m2["complete"] and m2["written_by"]["ranks"] == 2
    assert m1["batches"] == m2["batches"] and [b["g_seed"] for b in m1["batches"]] == [0, 1, 2]
    assert len({a[f].tobytes() for f in a}) == len(a)  # the images differ: a check that pixels can fail


def test_a_failing_rank_stops_every_rank(tmp_path):
    """Rank 1 cannot write its batch: both ranks stop with the error at once (no wait at a barrier
    until the process group times out), and the manifest is not marked complete."""
    out, hook = tmp_path / "out", tmp_path / "hook"
    _subprocess(["-m", "stagevar", *CLI, "--out", str(out)])
    for name in ("00002_000.png", "00003_000.png", "00004_000.png"):  # batches 1 (rank 0) and 2 (rank 1) again
        (out / name).unlink()
    hook.mkdir()  # rank 1's writes fail, injected at interpreter start-up
    (hook / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import stagevar.tools.generate as g\n"
        "    def broken(*a, **k):\n"
        "        raise OSError('disk full on rank 1')\n"
        "    g.save_png = broken\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{hook}{os.pathsep}{ROOT}")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "stagevar", *CLI, "--out", str(out)], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "rank 1 failed (OSError: disk full on rank 1)" in done.stderr, done.stderr[-2000:]
    assert (out / "00002_000.png").exists() and not (out / "00004_000.png").exists()  # rank 0's batch was written
    assert not json.loads((out / MANIFEST).read_text())["complete"]


def test_a_batch_depends_on_seed_k_and_b_only_not_on_order_or_global_state(ref, tmp_path):
    _run(ref, tmp_path / "all")
    torch.manual_seed(123)  # global state the run must not read
    _run(ref, tmp_path / "last")  # then batch 1 regenerated alone, after the others
    os.remove(tmp_path / "last" / "00002_000.png")
    assert _run(ref, tmp_path / "last").ran == [1]
    full, again = _pixels(tmp_path / "all"), _pixels(tmp_path / "last")
    assert all(np.array_equal(full[f], again[f]) for f in full)
    seed1 = _run(ref, tmp_path / "seed1", seed=1)
    assert [(b["k"], b["g_seed"]) for b in json.loads(open(seed1.manifest).read())["batches"]] == \
        [(k, gen.batch_seed(1, k)) for k in range(3)]
    other_seed = _pixels(os.path.dirname(seed1.manifest))
    assert not np.array_equal(other_seed["00000_000.png"], full["00000_000.png"])
    other_b = _pixels(os.path.dirname(_run(ref, tmp_path / "b3", batch=3).manifest))
    assert not np.array_equal(other_b["00003_000.png"], full["00003_000.png"])  # batch 1 of 3 vs batch 1 of 2


def test_resume_regenerates_only_the_missing_batch(ref, tmp_path):
    out = tmp_path / "o"
    first = _run(ref, out)
    assert first.ran == [0, 1, 2] and first.skipped == []
    for f in os.listdir(out):
        os.utime(out / f, ns=(0, 0))
    os.remove(out / "00001_000.png")  # batch 0 (items 0 and 1) is no longer complete
    (out / "00004_000.png.tmp-99").write_bytes(b"half")  # an interrupted write's leftover is not an image
    again = _run(ref, out)
    assert again.ran == [0] and again.skipped == [1, 2]
    changed = sorted(f for f, t in _mtimes(out).items() if t != 0)
    assert changed == ["00000_000.png", "00001_000.png"]
    assert json.loads((out / MANIFEST).read_text())["complete"] is True


def test_another_runs_folder_is_refused_naming_what_to_change(ref, tmp_path):
    out = tmp_path / "o"
    _run(ref, out)
    for f in os.listdir(out):
        os.utime(out / f, ns=(0, 0))
    with pytest.raises(ValueError, match=r"batch: 2 there, 3 now.*--batch 2.*another output folder"):
        _run(ref, out, batch=3)
    with pytest.raises(ValueError, match=r"config: 'default'.*'baseline' null now.*no --config"):
        _run(ref, out, config="baseline")
    with pytest.raises(ValueError, match=r"seed: 0 there, 4 now.*--seed 0"):
        _run(ref, out, seed=4)
    for other in (dict(top_k=5, top_p=0.0), dict(top_k=0, top_p=0.9), dict(cfg=1.5, top_k=0, top_p=0.0)):
        with pytest.raises(ValueError, match="another output folder"):  # the call's options are part of the run
            _run(ref, out, call_kwargs=dict(ref.call_kwargs, **other))
    assert set(_mtimes(out).values()) == {0}  # nothing rewritten
    (out / MANIFEST).unlink()  # images without a manifest: nothing says how they were made
    with pytest.raises(ValueError, match="no manifest.json"):
        _run(ref, out)


def test_the_config_is_recorded_and_applied(ref, tmp_path):
    base = _run(ref, tmp_path / "base", config="baseline")
    default = _run(ref, tmp_path / "default", config=MODEL_DEFAULT)
    mb, md = (json.loads(open(r.manifest).read()) for r in (base, default))
    assert mb["config"] is None and mb["method"] == "baseline"
    assert md["config"]["name"] == "var-d16" and md["config_source"] == "var family default"
    assert md["call"] == {"cfg": 4.0, "top_k": 0, "top_p": 0.0} and md["model"] == ref.description
    pb, pd = _pixels(tmp_path / "base"), _pixels(tmp_path / "default")
    assert any(not np.array_equal(pb[f], pd[f]) for f in pb)  # the accelerated config changed the images
    assert not hasattr(ref.model, "_stagevar")  # unpatched again


def test_an_interrupted_image_write_leaves_no_file(tmp_path, monkeypatch):
    from stagevar.tools import figures

    def broken(arr, path):
        with open(path, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(figures, "write_png", broken)
    with pytest.raises(OSError, match="disk full"):
        gen.save_png(torch.rand(3, 4, 4), str(tmp_path / "x.png"))
    assert os.listdir(tmp_path) == []


def test_bad_input_is_refused_with_what_to_change(ref, tmp_path, capsys):
    for kw, msg in ((dict(items=[]), "no items"), (dict(batch=0), "batch=0"), (dict(per_item=0), "per_item=0"),
                    (dict(seed=-1), "seed=-1"), (dict(items=[0, "a fox"]), "all class labels"),
                    (dict(items=[99]), "outside 0..9"), (dict(config="nope"), "unknown config")):
        with pytest.raises(ValueError, match=msg):
            _run(ref, tmp_path / "o", **kw)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="cannot create the output folder"):
        _run(ref, blocker / "sub")
    with pytest.raises(SystemExit):
        cli.main([*CLI, "--per-item", "0", "--out", str(tmp_path / "p")])
    assert "--per-item must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --classes and --prompts exclude each other
        cli.main(["generate", "--classes", "0", "--prompts", "a fox"])
    assert cli.main(["generate", "--model", "var", "--shape", "tiny", "--prompts", "a fox", "--out",
                     str(tmp_path / "p")]) == 1
    assert "takes class labels, not prompts" in capsys.readouterr().err


def test_cli_help_progress_and_prompts_file(tmp_path, capsys):
    assert "--per-item" in _subprocess(["-m", "stagevar", "generate", "--help"]).stdout
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a red fox"}\n\n{"prompt": "a lighthouse", "tag": "x"}\n')
    out = tmp_path / "o"
    argv = ["generate", "--model", "star", "--shape", "tiny", "--prompts-file", str(prompts), "--per-item", "2",
            "--batch", "3", "--top-k", "0", "--top-p", "0", "--out", str(out)]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "stagevar generate" in captured.err  # the progress bar
    m = json.loads((out / MANIFEST).read_text())
    assert m["items"] == ["a red fox", "a lighthouse"] and m["per_item"] == 2 and m["batch"] == 3
    assert sorted(_pixels(out)) == ["00000_000.png", "00000_001.png", "00001_000.png", "00001_001.png"]
    assert cli.main(argv + ["--quiet"]) == 0  # resumed: nothing to run, nothing shown
    captured = capsys.readouterr()
    assert captured.err == "" and "2 already written, 0 run" in captured.out


def test_progress_shows_steps_as_a_bar_or_as_lines_and_nothing_when_disabled(monkeypatch, capsys):
    """With tqdm: one bar of ``total`` steps, each step's note beside it, closed at the end. Without
    it: a line per step with the count and the seconds since the display began. Disabled: nothing."""
    import types

    from stagevar.tools import _progress

    clock = iter([10.0, 12.5, 13.0] + [99.0] * 2)  # the display begins at 10 s; two steps; two more displays
    monkeypatch.setattr(_progress.time, "perf_counter", lambda: next(clock))
    monkeypatch.setitem(sys.modules, "tqdm", None)  # not installed: the import fails
    p = _progress.Progress(2, True, "stagevar generate", "batch")
    p.step("rank 0")
    p.step()
    p.close()
    assert capsys.readouterr().err == ("stagevar generate: batch 1/2 (rank 0), 2.5 s\n"
                                       "stagevar generate: batch 2/2, 3.0 s\n")

    seen = []

    class Bar:
        def __init__(self, **kw):
            seen.append(("bar", kw["total"], kw["desc"], kw["unit"], kw["file"] is sys.stderr))

        def set_postfix_str(self, note):
            seen.append(("note", note))

        def update(self, n):
            seen.append(("update", n))

        def close(self):
            seen.append(("close",))

    monkeypatch.setitem(sys.modules, "tqdm", types.SimpleNamespace(tqdm=Bar))
    p = _progress.Progress(3, True, "stagevar bench", "call")
    p.step("a")
    p.step()
    p.close()
    assert seen == [("bar", 3, "stagevar bench", "call", True), ("note", "a"), ("update", 1), ("update", 1), ("close",)]
    quiet = _progress.Progress(3, False, "stagevar bench", "call")
    quiet.step("a")
    quiet.close()
    assert quiet.bar is None and len(seen) == 5 and capsys.readouterr().err == ""


def test_a_failing_call_leaves_the_set_incomplete_and_the_model_usable(ref, tmp_path, monkeypatch):
    """A short batch is an error, not a silently missing image; the manifest never says complete."""
    from stagevar.adapters import adapter_for

    adapter = type(adapter_for(ref.model))
    real = adapter.images_of
    monkeypatch.setattr(adapter, "images_of", lambda self, out: real(self, out)[:1])  # one image per batch
    with pytest.raises(RuntimeError, match="batch 0: the call returned 1 images for 2 samples"):
        _run(ref, tmp_path)
    assert not json.loads((tmp_path / MANIFEST).read_text())["complete"]
    monkeypatch.undo()
    assert not __import__("stagevar").is_accelerated(ref.model)
    result = _run(ref, tmp_path)  # resumes and finishes
    assert json.loads((tmp_path / MANIFEST).read_text())["complete"] and len(result.files) == len(ITEMS)


def test_resuming_on_another_device_warns(ref, tmp_path):
    _run(ref, tmp_path, items=[0, 1])
    m = json.loads((tmp_path / MANIFEST).read_text())
    m["written_by"]["device"] = "cuda:0"
    (tmp_path / MANIFEST).write_text(json.dumps(m))
    with pytest.warns(UserWarning, match="resuming on cpu a set started on cuda:0"):
        _run(ref, tmp_path, items=[0, 1])


def test_an_explicit_gpu_index_under_torchrun_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(CLI + ["--device", "cuda:0", "--out", str(tmp_path / "out")]) == 1
    assert "would put all 2 ranks on one GPU; give --device cuda" in capsys.readouterr().err


def test_geneval_layout_writes_what_genevals_evaluator_reads(tmp_path, capsys):
    """--layout geneval: per prompt NNNNN/metadata.jsonl (its line of the .jsonl, verbatim as JSON) and
    NNNNN/samples/RRRR.png; the same pixels as the flat layout, and a flat folder is not resumed as one."""
    prompts = tmp_path / "evaluation_metadata.jsonl"
    lines = [{"tag": "single_object", "include": [{"class": "fox", "count": 1}], "prompt": "a photo of a fox"},
             {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}], "prompt": "a red car"}]
    prompts.write_text("".join(json.dumps(x) + "\n" for x in lines))
    argv = ["generate", "--model", "star", "--shape", "tiny", "--prompts-file", str(prompts), "--per-item", "2",
            "--batch", "3", "--top-k", "0", "--top-p", "0", "--quiet"]
    assert cli.main(argv + ["--layout", "geneval", "--out", str(tmp_path / "g")]) == 0
    assert cli.main(argv + ["--out", str(tmp_path / "f")]) == 0
    g, f = tmp_path / "g", tmp_path / "f"
    for i, line in enumerate(lines):
        assert [json.loads(x) for x in (g / f"{i:05d}" / "metadata.jsonl").read_text().splitlines()] == [line]
        assert sorted(os.listdir(g / f"{i:05d}" / "samples")) == ["0000.png", "0001.png"]
        for rep in range(2):
            a = np.asarray(Image.open(g / f"{i:05d}" / "samples" / f"{rep:04d}.png"))
            assert np.array_equal(a, np.asarray(Image.open(f / f"{i:05d}_{rep:03d}.png")))
    assert json.loads((g / MANIFEST).read_text())["complete"]
    capsys.readouterr()
    assert cli.main(argv + ["--layout", "geneval", "--out", str(f)]) == 1  # the flat folder is another run's
    assert "run with --layout flat" in capsys.readouterr().err


def test_a_prompts_file_with_a_byte_order_mark_or_not_utf8(tmp_path):
    """A UTF-8 byte-order mark became part of the first prompt (and broke .jsonl)."""
    from stagevar.tools.generate import read_prompts

    plain, jsonl, latin = tmp_path / "p.txt", tmp_path / "p.jsonl", tmp_path / "l.txt"
    plain.write_bytes("\ufeffa red fox\nsnow\n".encode("utf-8"))
    jsonl.write_bytes('\ufeff{"prompt": "a red fox", "tag": 1}\n'.encode("utf-8"))
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    assert read_prompts(str(plain)) == (["a red fox", "snow"], None)
    assert read_prompts(str(jsonl)) == (["a red fox"], [{"prompt": "a red fox", "tag": 1}])
    with pytest.raises(ValueError, match=r"l.txt is not UTF-8 text .*save the prompts file as UTF-8"):
        read_prompts(str(latin))
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100000 + "\n")
    with pytest.raises(ValueError, match="line 1 is not a JSON object with a 'prompt'"):
        read_prompts(str(deep))


def test_a_manifest_that_is_not_json_is_named(tmp_path):
    from stagevar.tools.generate import MANIFEST, _read_json

    for text in (b"{\"format\": ", b"\xff\xfe", b"[" * 100000):
        (tmp_path / MANIFEST).write_bytes(text)
        with pytest.raises(ValueError, match=f"{MANIFEST} is not valid JSON"):
            _read_json(str(tmp_path / MANIFEST))


def test_rank_and_world_come_from_an_initialised_process_group_and_a_given_world_is_kept(monkeypatch, tmp_path):
    import torch.distributed as dist

    with pytest.raises(ValueError, match="world=2 needs an initialised torch.distributed process group"):
        gen._place(1, 2)
    with pytest.raises(ValueError, match="world=2 needs an initialised torch.distributed process group"):
        gen.generate(reference_var("tiny"), [0, 1], str(tmp_path / "o"), batch=2, rank=0,
                     world=2)
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 3)
    monkeypatch.setattr(dist, "get_rank", lambda: 2)
    assert gen._place(None, None) == (2, 3)
