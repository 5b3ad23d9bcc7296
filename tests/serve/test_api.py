"""The HTTP API through the real server process (``server`` fixture: 2 workers, bearer token, 8 MiB uploads)."""

from __future__ import annotations

import base64
import io
import json
import re
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import EXAMPLE
from tests.robustness.test_bad_inputs import IMAGE_CASES
from tests.serve.conftest import needs_serve, wait_for

pytestmark = needs_serve
PHOTO = EXAMPLE.read_bytes()
Q = "generations=3&popsize=8&seed=7&strength=0.8"
CLI_ARGS = ["-g", "3", "-p", "8", "--seed", "7", "--strength", "0.8"]


def _same_report(http_rep: dict, cli_rep: dict) -> None:
    from beautyrt.runtime.api import without_timings

    a = {k: v for k, v in without_timings(http_rep).items() if k not in ("input", "output")}
    b = {k: v for k, v in without_timings(cli_rep).items() if k not in ("input", "output")}
    assert a == b


# --- same bytes as the CLI ------------------------------------------------------------------------------------
def test_multipart_jpeg_has_the_cli_bytes(server, cli, tiny_bundle_with_detector, tmp_path):
    r = server.post_form(
        "/v1/optimize",
        {"generations": "3", "popsize": "8", "seed": "7", "strength": "0.8"},
        PHOTO,
        accept="image/jpeg",
    )
    assert r.status == 200, r.body[:300]
    assert r.headers["content-type"] == "image/jpeg"
    out, rep = tmp_path / "o.jpg", tmp_path / "rep.json"
    c = cli("optimize", str(EXAMPLE), "-o", str(out), "--report", str(rep), "--bundle", str(tiny_bundle_with_detector),
            *CLI_ARGS, "-q")  # fmt: skip
    assert c.returncode == 0, c.stderr
    assert r.body == out.read_bytes(), "the service's photo must be byte-identical to `beautyrt optimize`'s"
    _same_report(r.report, json.loads(rep.read_text()))
    assert r.headers["x-beautyrt-result-id"] == r.report["result_id"]
    assert b"AI-edited by beautyrt" in Image.open(io.BytesIO(r.body)).info.get("xmp", b"")


def test_raw_body_png_and_snake_case_names_have_the_cli_bytes(server, cli, tiny_bundle_with_detector, tmp_path):
    q = "generations=2&popsize=6&seed=3&identity_floor=0.5&latent-weight=0.2&naturalness_weight=0.5&score_on=output"
    q += "&format=png&finalists=3&mirrored=false&covariance=diagonal"
    r = server.post_image(f"/v1/optimize?{q}", PHOTO)
    assert r.status == 200 and r.headers["content-type"] == "image/png", r.body[:300]
    out = tmp_path / "o.png"
    args = ["-g", "2", "-p", "6", "--seed", "3", "--identity-floor", "0.5", "--latent-weight", "0.2",
            "--naturalness-weight", "0.5", "--finalists", "3", "--no-mirrored", "--covariance", "diagonal"]  # fmt: skip
    c = cli("optimize", str(EXAMPLE), "-o", str(out), "--bundle", str(tiny_bundle_with_detector), *args, "--score-on",
            "output", "-q")  # fmt: skip
    assert c.returncode == 0, c.stderr
    assert r.body == out.read_bytes()
    assert r.report["settings"]["weights"]["identity_floor"] == 0.5
    assert r.report["settings"]["weights"]["naturalness_weight"] == 0.5
    assert r.report["settings"]["finalists"] == 3 and len(r.report["rerank"]["finalists"]) == 3
    assert r.report["settings"]["mirrored"] is False and r.report["settings"]["covariance"] == "diagonal"


def test_json_answer_carries_the_same_image_and_report(server):
    img = server.post_image(f"/v1/optimize?{Q}", PHOTO, accept="image/jpeg")
    js = server.post_image(f"/v1/optimize?{Q}", PHOTO, accept="application/json")
    assert img.status == js.status == 200
    body = js.json()
    assert base64.b64decode(body["image"]) == img.body
    assert body["media_type"] == "image/jpeg" and body["result_id"] == img.report["result_id"]
    from beautyrt.runtime.api import without_timings

    assert without_timings(body["report"]) == without_timings(img.report)
    # ?format= wins over Accept; the default is the input's own format
    assert server.post_image(f"/v1/optimize?{Q}&format=webp", PHOTO, accept="image/png").headers["content-type"] == (
        "image/webp"
    )
    png = io.BytesIO()
    Image.open(EXAMPLE).save(png, format="PNG")
    assert server.post_image(f"/v1/optimize?{Q}", png.getvalue()).headers["content-type"] == "image/png"


# --- parameters ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "query, pattern",
    [
        ("generations=abc", r"generations must be an integer, got 'abc'"),
        ("generations=0", r"generations must be in 1\.\.10000"),
        ("strength=2.5", r"strength must be in \[0, 2\]"),
        ("strength=nan", r"strength must be a finite number"),
        ("space=zz", r"space must be one of w, groups, wplus"),
        ("mode=nope", r"mode must be one of transfer, generated"),
        ("popsize=1", r"popsize must be in 2\.\.1024"),
        ("finalists=0", r"finalists must be in 1\.\.64"),
        ("finalists=two", r"finalists must be an integer"),
        ("mirrored=maybe", r"mirrored must be true or false"),
        ("covariance=sparse", r"covariance must be one of auto, full, diagonal"),
        ("start=middle", r"start must be one of origin, prior"),
        ("sigma=-1", r"sigma must be in \(0, 10\]"),
        ("identity-floor=3", r"identity-floor must be in \[-1, 1\]"),
        ("face=1&all-faces=true", r"either a face index"),
        ("all-faces=maybe", r"all-faces must be true or false"),
        ("quality=0", r"quality must be in 1\.\.100"),
        ("format=gif", r"format must be one of jpeg, png, webp, json"),
        ("bogus=1", r"unknown parameter 'bogus'"),
        ("seed=1&seed=2", r"seed given more than once"),
        ("seed=1&seed_=2", r"unknown parameter"),
        ("out=/tmp/x.jpg", r"never reads or writes files"),
        ("report=/etc/passwd", r"never reads or writes files"),
        ("bundle=/tmp", r"never reads or writes files"),
        ("threads=4", r"the server's setting"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(server, query, pattern):
    before = server.value("beautyrt_search_generations_total")
    r = server.post_image(f"/v1/optimize?{query}", PHOTO)
    assert r.status == 400, (r.status, r.body[:200])
    err = r.json()["error"]
    assert err["code"] == 2 and err["kind"] == "UsageError" and re.search(pattern, err["message"]), err
    assert "\n" not in err["message"]
    assert server.value("beautyrt_search_generations_total") == before, "nothing may run for a bad parameter"


def test_form_fields_are_parameters_too(server):
    r = server.post_form("/v1/optimize", {"generations": "x"}, PHOTO)
    assert r.status == 400 and "generations must be an integer" in r.json()["error"]["message"]
    r = server.post_form("/v1/optimize?seed=1", {"seed": "2"}, PHOTO)
    assert r.status == 400 and "more than once" in r.json()["error"]["message"]
    body, ctype = (b"--x\r\nContent-Disposition: form-data; name=\"seed\"\r\n\r\n1\r\n--x--\r\n",
                   "multipart/form-data; boundary=x")  # fmt: skip
    r = server.request("POST", "/v1/optimize", body, {"Content-Type": ctype})
    assert r.status == 400 and "exactly one 'image' field" in r.json()["error"]["message"]


# --- the bad-input corpus of tests/robustness through HTTP -----------------------------------------------------------
HTTP_STATUS = {0: 200, 32: 415, 33: 415, 34: 422, 35: 422}
PATH_ONLY = {"missing_path", "directory"}  # a request cannot name a server path: these cases do not exist over HTTP


@pytest.mark.parametrize("case", sorted(set(IMAGE_CASES) - PATH_ONLY))
def test_bad_input_corpus_over_http(case, server, tmp_path):
    build, code, exc, pattern = IMAGE_CASES[case]
    data = build(tmp_path).read_bytes()
    r = server.post_image("/v1/optimize?generations=1&popsize=4&seed=0", data, accept="image/png")
    assert r.status == HTTP_STATUS[code], (case, r.status, r.body[:300])
    if code == 0:
        out = Image.open(io.BytesIO(r.body))
        from beautyrt.runtime.ops.imageio import load_image

        src = load_image(data)
        assert out.size == (src.shape[1], src.shape[0]) and out.mode == "RGB"
        assert r.report["faces_found"] >= 1
    else:
        err = r.json()["error"]
        assert err["code"] == code and err["kind"] == exc.__name__, err
        assert re.search(pattern, err["message"]) and "\n" not in err["message"], err
        assert "Traceback" not in r.body.decode()
    assert server.ready()


def test_no_500_and_still_ready_after_the_corpus(server):
    """Runs after the corpus (file order): not one answer was a 500, and the server is ready."""
    m = server.metrics()
    fives = {k: v for k, v in m.items() if k[0] == "beautyrt_http_requests_total" and ("status", "500") in k[1]}
    assert not fives, fives
    assert server.ready()


# --- statuses --------------------------------------------------------------------------------------------------------
def test_401_without_or_with_a_wrong_token_and_open_probes(server):
    before = server.value("beautyrt_rejected_total", reason="unauthorized")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {server.token}"}):
        r = server.request("POST", f"/v1/optimize?{Q}", PHOTO, headers, auth=False)
        assert r.status == 401, r.status
        assert r.json()["error"]["code"] == 80 and r.headers["www-authenticate"].startswith("Bearer")
        assert server.request("GET", "/v1/bundle", auth=False).status == 401
        assert server.request("GET", "/metrics", headers=headers, auth=False).status == 401
    assert server.value("beautyrt_rejected_total", reason="unauthorized") == before + 9
    for open_path in ("/healthz", "/readyz", "/", "/static/app.js"):
        assert server.get(open_path, auth=False).status == 200, open_path


def test_413_from_content_length_before_the_body_is_sent(server):
    """The header claims 100 MiB and the client sends no body at all: the answer must come anyway."""
    import socket

    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        s.sendall(
            b"POST /v1/optimize HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + server.token.encode() + b"\r\n"
            b"Content-Type: image/jpeg\r\nContent-Length: 104857600\r\n\r\n"
        )
        chunks = []
        while True:  # the server answers and closes the connection (it does not wait for, or drain, the body)
            c = s.recv(65536)
            if not c:
                break
            chunks.append(c)
        head = b"".join(chunks).decode("latin-1")
    finally:
        s.close()
    assert head.startswith("HTTP/1.1 413"), head[:200]
    assert '"code":81' in head and "UploadTooLarge" in head


def test_413_while_streaming_a_chunked_body(server):
    """No Content-Length (chunked): the server counts bytes as they come and stops past the limit."""
    import http.client

    before = server.value("beautyrt_rejected_total", reason="upload_too_large")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    chunk = b"\0" * (1 << 20)
    sent = 0

    def body():
        nonlocal sent
        for _ in range(64):  # up to 64 MiB, far past the 8 MiB limit; the server answers long before
            sent += len(chunk)
            yield chunk

    try:
        conn.request("POST", "/v1/optimize", body=body(), headers={"Authorization": f"Bearer {server.token}"},
                     encode_chunked=True)  # fmt: skip
        r = conn.getresponse()
        status, payload = r.status, r.read()
    except (BrokenPipeError, ConnectionResetError):
        status, payload = None, b""
    finally:
        conn.close()
    assert server.value("beautyrt_rejected_total", reason="upload_too_large") == before + 1
    if status is not None:
        assert status == 413 and json.loads(payload)["error"]["code"] == 81
    assert sent < 64 << 20, "the server must stop reading past the limit"
    assert server.ready()


def test_406_404_405_are_json(server):
    r = server.post_image(f"/v1/optimize?{Q}", PHOTO, accept="text/html")
    assert r.status == 406 and r.json()["error"]["code"] == 2
    r = server.get("/v1/jobs/0123456789abcdef01234567")
    assert r.status == 404 and r.json()["error"] == {
        "code": 83,
        "kind": "NotFound",
        "message": r.json()["error"]["message"],
    }
    assert server.get("/nowhere").status == 404
    r = server.request("PUT", "/v1/optimize", b"")
    assert r.status == 405 and r.json()["error"]["kind"] == "UsageError"
    assert server.get("/static/..%2Fapp.py").status == 404


# --- metrics ---------------------------------------------------------------------------------------------------------
def test_metrics_parse_and_count_what_happened(server):
    m0 = server.metrics()
    key = (
        "beautyrt_http_requests_total",
        frozenset({"route": "/v1/optimize", "method": "POST", "status": "200"}.items()),
    )
    bad = (
        "beautyrt_http_requests_total",
        frozenset({"route": "/v1/optimize", "method": "POST", "status": "422"}.items()),
    )
    search = ("beautyrt_stage_duration_seconds_count", frozenset({"stage": "search"}.items()))
    gens = ("beautyrt_search_generations_total", frozenset())
    assert server.post_image("/v1/optimize?generations=4&popsize=4", PHOTO).status == 200
    assert server.post_image("/v1/optimize?generations=2&popsize=4", PHOTO).status == 200
    noise = np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    assert server.post_image("/v1/optimize?generations=2&popsize=4", buf.getvalue()).status == 422
    m1 = server.metrics()
    assert m1[key] - m0.get(key, 0) == 2
    assert m1[bad] - m0.get(bad, 0) == 1
    assert m1[search] - m0.get(search, 0) == 2
    assert m1[gens] - m0.get(gens, 0) == 6
    for stage in ("decode", "detect", "search", "compose", "encode"):
        assert m1[("beautyrt_stage_duration_seconds_count", frozenset({"stage": stage}.items()))] >= 2, stage
    lat = ("beautyrt_http_request_duration_seconds_count", frozenset({"route": "/v1/optimize"}.items()))
    assert m1[lat] - m0.get(lat, 0) == 3
    for gauge in ("beautyrt_queue_depth", "beautyrt_in_flight", "beautyrt_ready"):
        assert (gauge, frozenset()) in m1, gauge
    assert m1[("beautyrt_ready", frozenset())] == 1.0
    assert m1[("beautyrt_in_flight", frozenset())] == 0.0


# --- bundle ---------------------------------------------------------------------------------------------------------
def test_bundle_route(server, tiny_bundle_with_detector):
    info = server.get("/v1/bundle").json()
    manifest = json.loads((tiny_bundle_with_detector / "manifest.json").read_text())
    assert set(info["roles"]) == set(manifest["models"])
    for role, spec in info["roles"].items():
        assert spec["sha256"] == manifest["models"][role]["sha256"]
    assert info["bundle_hash"] == server.get("/readyz").json()["bundle_hash"]
    assert info["defaults"]["popsize"] == 16 and info["defaults"]["generations"] >= 1
    assert "licences" in info and "recommended" in info
    assert str(tiny_bundle_with_detector) not in json.dumps(info), "no server path in answers"


# --- compose ---------------------------------------------------------------------------------------------------------
def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)


def test_compose_rerenders_without_searching(server):
    r = server.post_image("/v1/optimize?generations=3&popsize=8&seed=2&format=png", PHOTO)
    assert r.status == 200
    rid = r.report["result_id"]
    m0 = server.metrics()
    same = server.request("POST", f"/v1/compose?result-id={rid}&strength=1&format=png")
    assert same.status == 200 and same.body == r.body, "strength 1 again gives the search's own bytes"
    half = server.request(
        "POST", "/v1/compose", json.dumps({"result_id": rid, "strength": 0.5, "format": "png"}).encode(),
        {"Content-Type": "application/json"},
    )  # fmt: skip
    zero = server.request("POST", f"/v1/compose?result_id={rid}&strength=0", headers={"Accept": "image/png"})
    assert half.status == zero.status == 200
    from beautyrt.runtime.ops.imageio import load_image

    decoded = load_image(PHOTO).astype(np.int16)
    assert np.abs(_rgb(zero.body) - decoded).max() <= 1, "strength 0: the decoded input (face region included)"
    full, mid = _rgb(r.body), _rgb(half.body)
    assert np.abs(full - decoded).max() > 0, "the edit must change something at strength 1"
    changed = np.abs(full - decoded).sum(-1) > 0
    assert 0 < np.abs(mid - decoded)[changed].mean() < np.abs(full - decoded)[changed].mean()
    assert half.report["strength"] == 0.5 and half.report["composed_from"] == rid
    assert half.report["history"] == r.report["history"], "the same search"
    m1 = server.metrics()
    gens = ("beautyrt_search_generations_total", frozenset())
    search = ("beautyrt_stage_duration_seconds_count", frozenset({"stage": "search"}.items()))
    assert m1[gens] == m0[gens] and m1[search] == m0[search], "compose must not search"
    composes = ("beautyrt_composes_total", frozenset())
    assert m1[composes] - m0.get(composes, 0) == 3
    # a composed result is kept too, and its id composes again
    again = server.request("POST", f"/v1/compose?result-id={half.report['result_id']}&strength=1&format=png")
    assert again.status == 200 and again.body == r.body


def test_compose_refusals(server):
    r = server.request("POST", "/v1/compose?result-id=nope&strength=0.5")
    assert r.status == 404 and r.json()["error"]["code"] == 83
    ok = server.post_image("/v1/optimize?generations=1&popsize=4", PHOTO)
    rid = ok.report["result_id"]
    for q, pat in (
        (f"result-id={rid}&strength=3", r"strength must be in \[0, 2\]"),
        (f"result-id={rid}&strength=x", r"strength must be a number"),
        (f"result-id={rid}", r"compose needs strength"),
        ("strength=1", r"compose needs result-id"),
        (f"result-id={rid}&strength=1&seed=2", r"unknown parameter 'seed'"),
    ):
        r = server.request("POST", f"/v1/compose?{q}")
        assert r.status == 400 and re.search(pat, r.json()["error"]["message"]), (q, r.body)


# --- jobs ------------------------------------------------------------------------------------------------------------
def test_job_api_progress_and_result(server):
    r = server.post_form("/v1/jobs", {"generations": "5", "popsize": "6", "seed": "4"}, PHOTO)
    assert r.status == 202 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    jid = r.json()["id"]
    seen = []

    def finished():
        j = server.get(f"/v1/jobs/{jid}").json()
        seen.append(j["generation"])
        return j if j["state"] in ("done", "failed", "cancelled") else None

    j = wait_for(finished, 60, 0.02)
    assert j["state"] == "done", j
    assert j["generation"] == j["total"] == 5 and len(j["best_history"]) == 5
    assert seen == sorted(seen)
    assert j["report"]["generations_run"] == 5
    res = server.get(f"/v1/jobs/{jid}/result", headers={"Accept": "image/jpeg"})
    sync = server.post_form("/v1/optimize", {"generations": "5", "popsize": "6", "seed": "4"}, PHOTO)
    assert res.status == 200 and res.body == sync.body, "a job's result is the synchronous answer's bytes"
    rep = server.get(f"/v1/results/{j['result_id']}").json()["report"]
    assert rep["result_id"] == j["result_id"] == res.report["result_id"]


def test_job_pending_and_delete_stop_the_search(server):
    r = server.post_image("/v1/jobs?generations=10000&popsize=4", PHOTO)
    jid = r.json()["id"]
    wait_for(lambda: server.get(f"/v1/jobs/{jid}").json()["generation"] > 3, 30)
    p = server.get(f"/v1/jobs/{jid}/result")
    assert p.status == 409 and p.json()["error"]["code"] == 84
    d = server.request("DELETE", f"/v1/jobs/{jid}")
    assert d.status == 200 and d.json()["state"] == "cancelled"
    g = server.get(f"/v1/jobs/{jid}").json()["generation"]
    time.sleep(0.5)
    assert server.get(f"/v1/jobs/{jid}").json()["generation"] == g, "a cancelled search must stop"
    res = server.get(f"/v1/jobs/{jid}/result")
    assert res.status == 503 and res.json()["error"]["code"] == 60
    assert server.value("beautyrt_cancelled_total", reason="client") >= 1
