"""`beautyrt batch` on the local process pool: input lists, unique names inside OUT_DIR, the CLI's bytes,
failures recorded, resumption (skip / redo / torn line). Real subprocesses, real files; no Ray needed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from beautyrt.engines.errors import UsageError
from beautyrt.runtime.tools import batch as B
from tests.scale.conftest import BATCH_ARGS, run_beautyrt


def lines(out: Path) -> list[dict]:
    raw = (out / B.RESULTS).read_bytes()
    assert raw.endswith(b"\n"), "results.jsonl must end with a whole line"
    return [json.loads(x) for x in raw.splitlines()]


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.name != B.RESULTS}


def test_input_lists_folder_text_csv_give_the_same_photos(photos, tmp_path):
    folder = B.list_inputs(photos)
    assert len(folder) == 12 and folder == sorted(folder)
    txt = tmp_path / "list.txt"
    rel = [str(p.relative_to(photos)) for p in folder]
    shutil.copytree(photos, tmp_path / "in")
    txt.write_text("# catalogue\n\n" + "\n".join(f"in/{r}" for r in rel) + "\n" + f"in/{rel[0]}\n")
    assert [p.relative_to(tmp_path / "in") for p in B.list_inputs(txt)] == [Path(r) for r in rel]
    csv = tmp_path / "list.csv"
    csv.write_text("sku,path\n" + "".join(f"{i},in/{r}\n" for i, r in enumerate(rel)))
    assert [p.relative_to(tmp_path / "in") for p in B.list_inputs(csv)] == [Path(r) for r in rel]
    bad = tmp_path / "nopath.csv"
    bad.write_text("sku,file\n1,a.jpg\n")
    with pytest.raises(UsageError, match="path"):
        B.list_inputs(bad)
    with pytest.raises(UsageError, match="does not exist"):
        B.list_inputs(tmp_path / "missing")


def test_output_names_are_unique_plain_names_inside_out_dir(photos, tmp_path):
    inputs = B.list_inputs(photos)
    tasks = B.plan(inputs, tmp_path)
    names = [t.key for t in tasks]
    assert len(set(names)) == len(names) == 12  # a/p0.jpg and b/p0.png, ... never collide
    same_stem = [n for n in names if n.startswith("p0.")]
    assert len(same_stem) == 2
    for t in tasks:
        assert Path(t.output).parent == tmp_path and "/" not in t.key and not t.key.startswith(".")
    evil = B.output_name(Path("/x/../../etc/..passwd.jpg"))
    assert "/" not in evil and not evil.startswith(".")


def test_local_batch_matches_the_cli_records_failures_and_resumes(photos, tiny_bundle, tmp_path, cli):
    src = tmp_path / "in"
    shutil.copytree(photos, src)
    (src / "a" / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "out"
    r = run_beautyrt("batch", str(src), str(out), "--bundle", str(tiny_bundle), "--workers", "2", *BATCH_ARGS)
    assert r.returncode == 3, r.stderr  # some photos failed: the job went on, and says so
    recs = lines(out)
    assert len(recs) == 13 and len({x["key"] for x in recs}) == 13
    failed = [x for x in recs if x["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"]["kind"] == "ImageDecodeError" and failed[0]["error"]["code"] == 32
    assert not (out / failed[0]["key"]).exists()
    done = {x["key"]: x for x in recs if x["status"] == "done"}
    assert set(outputs(out)) == set(done)  # no temporary file, nothing else
    # one output against `beautyrt optimize` with the same settings: byte-identical
    one = next(x for x in done.values() if x["input"].endswith("p1.jpg"))
    ref = tmp_path / "ref.jpg"
    c = cli("optimize", one["input"], "-o", str(ref), "--bundle", str(tiny_bundle), *BATCH_ARGS)
    assert c.returncode == 0, c.stderr
    assert (out / one["key"]).read_bytes() == ref.read_bytes()
    assert one["report"]["bundle_hash"] == one["bundle_hash"]
    before = outputs(out)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != B.RESULTS}

    # re-run: everything done is skipped (not rewritten), the failed one is tried again
    r = run_beautyrt("batch", str(src), str(out), "--bundle", str(tiny_bundle), *BATCH_ARGS, "--json")
    assert r.returncode == 3, r.stderr
    s = json.loads(r.stdout)
    assert (s["total"], s["done"], s["skipped"], s["failed"]) == (13, 0, 12, {"ImageDecodeError": 1})
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != B.RESULTS} == mtimes
    assert len(lines(out)) == 13, "a re-run must not duplicate records"

    # a torn last line (a crash mid-write) and a deleted output: dropped / redone, still one line per photo
    victim = sorted(done)[0]
    (out / victim).unlink()
    with open(out / B.RESULTS, "ab") as f:
        f.write(b'{"key":"' + victim.encode() + b'","status":"do')
    (src / "a" / "broken.jpg").unlink()
    r = run_beautyrt("batch", str(src), str(out), "--bundle", str(tiny_bundle), *BATCH_ARGS, "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert (s["total"], s["done"], s["skipped"]) == (12, 1, 11)
    assert outputs(out) == before
    recs = lines(out)
    assert len({x["key"] for x in recs}) == len(recs) == 13  # the old failure stays on record, once

    # other settings: nothing matches any more, all redone
    r = run_beautyrt("batch", str(src), str(out), "--bundle", str(tiny_bundle), *BATCH_ARGS, "--seed", "4", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["done"] == 12
    assert outputs(out) != before


def test_bad_arguments_are_one_line_errors(photos, tiny_bundle, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    for args, pat in [
        ([str(photos), str(f)], "not a folder"),
        ([str(tmp_path / "none"), str(tmp_path / "o")], "does not exist"),
        ([str(photos), str(tmp_path / "o"), "--workers", "0"], "--workers"),
        ([str(photos), str(tmp_path / "o"), "--address", "auto"], "need --ray"),
    ]:
        r = run_beautyrt("batch", *args, "--bundle", str(tiny_bundle), "-q")
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and pat in r.stderr and "Traceback" not in r.stderr, r.stderr


SEARCH_ARGS = ["--sigma", "0.2", "--identity-target", "0.9", "--identity-weight", "2", "--latent-weight", "0.5",
               "--naturalness-weight", "0.5", "--mirrored", "--covariance", "diagonal", "--finalists", "3"]  # fmt: skip


def test_batch_takes_optimizes_search_and_objective_options(photos, tiny_bundle, tmp_path, cli):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(photos / "a" / "p1.jpg", src / "p1.jpg")
    plain, tuned = tmp_path / "plain", tmp_path / "tuned"
    for out, extra in ((plain, []), (tuned, SEARCH_ARGS)):
        r = run_beautyrt("batch", str(src), str(out), "--bundle", str(tiny_bundle), *BATCH_ARGS, *extra)
        assert r.returncode == 0, r.stderr
    (rec,) = lines(tuned)
    s = rec["report"]["settings"]
    assert s["sigma0"] == 0.2 and s["mirrored"] is True and s["covariance"] == "diagonal" and s["finalists"] == 3
    w = s["weights"]
    assert (w["identity_target"], w["identity_weight"], w["latent_weight"], w["naturalness_weight"]) == (
        0.9,
        2,
        0.5,
        0.5,
    )
    ref = tmp_path / "ref.jpg"
    c = cli("optimize", str(src / "p1.jpg"), "-o", str(ref), "--bundle", str(tiny_bundle), *BATCH_ARGS, *SEARCH_ARGS)
    assert c.returncode == 0, c.stderr
    assert (tuned / rec["key"]).read_bytes() == ref.read_bytes()  # the options reached the workers, as optimize's
    assert (tuned / rec["key"]).read_bytes() != (plain / rec["key"]).read_bytes()
