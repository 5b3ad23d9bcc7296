// beautyrt's page: plain JS, no libraries, no build step; talks only to the server it came from.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const state = {
    file: null, beforeUrl: null, afterUrl: null, jobId: null, baseResultId: null, report: null,
    format: "image/jpeg", composeSeq: 0, composeTimer: null, polling: false, token: null,
  };

  // --- token: #token=... in the address (removed from it at once), else one typed in after a 401 -----------------
  try {
    const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem("beautyrt-token", decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
    state.token = sessionStorage.getItem("beautyrt-token");
  } catch (e) { state.token = null; }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (state.token) h["Authorization"] = "Bearer " + state.token;
    return h;
  }

  function setStatus(s) { document.body.dataset.state = s; }

  function showError(msg) {
    const el = $("error");
    el.textContent = String(msg).split("\n")[0];
    el.hidden = false;
    setStatus("error");
  }

  function clearError() { $("error").hidden = true; $("error").textContent = ""; }

  async function errorMessage(resp) {
    try {
      const body = await resp.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (e) { /* not JSON */ }
    return "the server answered " + resp.status + " " + resp.statusText;
  }

  async function call(url, opts) {
    let resp;
    try {
      resp = await fetch(url, Object.assign({ cache: "no-store" }, opts, { headers: headers((opts || {}).headers) }));
    } catch (e) {
      throw new Error("cannot reach the server (" + e.message + ")");
    }
    if (resp.status === 401) { $("token-row").hidden = false; }
    if (!resp.ok) throw new Error(await errorMessage(resp));
    return resp;
  }

  const fmt3 = (x) => (typeof x === "number" && isFinite(x) ? x.toFixed(3) : "–");

  function setNumber(id, value) {
    const el = $(id);
    el.textContent = fmt3(value);
    el.dataset.value = String(value);
  }

  // --- bundle info ----------------------------------------------------------------------------------------------
  async function loadBundle() {
    try {
      const info = await (await call("/v1/bundle")).json();
      const d = info.defaults || {};
      $("bundle").textContent = "Bundle " + String(info.bundle_hash).slice(0, 12) + " · " + (info.source || "bundle") +
        " · " + info.generator.resolution + " px generator · default " + d.generations + " generations of " + d.popsize;
      $("generations").placeholder = String(d.generations);
      $("token-row").hidden = true;
    } catch (e) {
      $("bundle").textContent = "Bundle: " + e.message;
    }
  }

  // --- choosing a photo -----------------------------------------------------------------------------------------
  function choose(file) {
    if (!file) return;
    clearError();
    state.file = file;
    state.format = /png$/i.test(file.type) ? "image/png" : /webp$/i.test(file.type) ? "image/webp" : "image/jpeg";
    if (state.beforeUrl) URL.revokeObjectURL(state.beforeUrl);
    state.beforeUrl = URL.createObjectURL(file);
    $("before").src = state.beforeUrl;
    $("after").removeAttribute("src");
    $("results").hidden = false;
    ["score-before", "score-after", "identity", "shown-strength"].forEach((id) => { $(id).textContent = "–"; });
    state.baseResultId = null;
    $("go").disabled = false;
    setStatus("chosen");
  }

  $("file").addEventListener("change", (ev) => choose(ev.target.files[0]));
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (ev) => {
    ev.preventDefault(); drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (ev) => {
    ev.preventDefault(); drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (ev) => {
    const f = ev.dataTransfer && ev.dataTransfer.files && ev.dataTransfer.files[0];
    if (f) choose(f);
  });
  drop.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") $("file").click(); });

  // --- the search -----------------------------------------------------------------------------------------------
  function showProgress(g, total, best) {
    $("progress").hidden = false;
    $("progress-bar").max = total || 1;
    $("progress-bar").value = g || 0;
    $("progress-text").textContent = total
      ? "generation " + g + " of " + total + (typeof best === "number" ? " · best score " + fmt3(best) : "")
      : "waiting for a worker…";
  }

  async function beautify() {
    if (!state.file) return;
    clearError();
    const form = new FormData();
    form.append("image", state.file, state.file.name || "photo");
    const g = $("generations").value.trim();
    if (g) form.append("generations", g);
    form.append("seed", $("seed").value.trim() || "0");
    form.append("strength", $("strength").value);
    $("go").disabled = true;
    setStatus("running");
    showProgress(0, 0);
    try {
      const job = await (await call("/v1/jobs", { method: "POST", body: form })).json();
      state.jobId = job.id;
      document.body.dataset.jobId = job.id;
      $("cancel").hidden = false;
      await poll(job.id);
    } catch (e) {
      showError(e.message);
    } finally {
      $("go").disabled = false;
      $("cancel").hidden = true;
    }
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  async function poll(id) {
    for (;;) {
      const j = await (await call("/v1/jobs/" + id)).json();
      showProgress(j.generation, j.total, j.best_score);
      if (j.best_history && j.best_history.length) drawPlot(j.best_history.map((s, i) => ({ generation: i + 1, best_score: s })), null);
      if (j.state === "done") return finished(j);
      if (j.state === "failed" || j.state === "cancelled") {
        throw new Error(j.error ? j.error.message : "the search " + j.state);
      }
      await sleep(250);
    }
  }

  async function finished(job) {
    const resp = await call("/v1/jobs/" + job.id + "/result", { headers: { Accept: state.format } });
    const blob = await resp.blob();
    const rep = job.report;
    state.report = rep;
    state.baseResultId = job.result_id;
    showAfter(blob, rep);
    setNumber("score-before", rep.score_before);
    setNumber("score-after", rep.score_after);
    setNumber("identity", rep.identity);
    drawPlot(rep.history, rep.settings && rep.settings.weights ? rep.settings.weights.identity_floor : null);
    $("progress-text").textContent = "done: " + rep.generations_run + " generations, " + rep.evaluations +
      " candidates, " + (rep.timings && rep.timings.total ? rep.timings.total.toFixed(2) + " s" : "");
    setStatus("done");
  }

  function showAfter(blob, rep) {
    if (state.afterUrl) URL.revokeObjectURL(state.afterUrl);
    state.afterUrl = URL.createObjectURL(blob);
    const img = $("after");
    img.src = state.afterUrl;
    img.dataset.resultId = rep.result_id;
    img.dataset.strength = String(rep.strength);
    $("shown-strength").textContent = Number(rep.strength).toFixed(2);
    const searched = state.report ? Number(state.report.strength) : Number(rep.strength);
    $("score-note").hidden = Number(rep.strength) === searched;
    $("score-note").textContent = "The scores are the search's, measured at strength " + searched.toFixed(2) +
      "; the slider re-renders the same edit without scoring it again.";
    const ext = blob.type === "image/png" ? ".png" : blob.type === "image/webp" ? ".webp" : ".jpg";
    const stem = state.file && state.file.name ? state.file.name.replace(/\.[^.]*$/, "") : "photo";
    $("download").href = state.afterUrl;
    $("download").download = stem + ".beautified" + ext;
  }

  $("go").addEventListener("click", beautify);
  $("cancel").addEventListener("click", async () => {
    if (state.jobId) { try { await call("/v1/jobs/" + state.jobId, { method: "DELETE" }); } catch (e) { showError(e.message); } }
  });
  $("token-save").addEventListener("click", () => {
    state.token = $("token").value.trim() || null;
    try { if (state.token) sessionStorage.setItem("beautyrt-token", state.token); } catch (e) { /* private mode */ }
    clearError();
    loadBundle();
  });

  // --- strength: re-compose the kept result (no new search) -----------------------------------------------------
  $("strength").addEventListener("input", () => {
    $("strength-value").textContent = Number($("strength").value).toFixed(2);
    if (!state.baseResultId) return;
    clearTimeout(state.composeTimer);
    state.composeTimer = setTimeout(compose, 120);
  });

  async function compose() {
    const seq = ++state.composeSeq;
    const strength = Number($("strength").value);
    try {
      const resp = await call("/v1/compose", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: state.format },
        body: JSON.stringify({ result_id: state.baseResultId, strength: strength }),
      });
      const blob = await resp.blob();
      if (seq !== state.composeSeq) return; // a newer position of the slider is on its way
      const rep = JSON.parse(resp.headers.get("X-Beautyrt-Report"));
      showAfter(blob, rep);
      document.body.dataset.composed = String(Number(document.body.dataset.composed || 0) + 1);
    } catch (e) {
      showError(e.message);
    }
  }

  // --- the per-generation plot (canvas, drawn here) ------------------------------------------------------------
  function drawPlot(history, floor) {
    const c = $("plot");
    const ctx = c.getContext("2d");
    const W = c.width, H = c.height, L = 56, R = 56, T = 12, B = 52;
    ctx.clearRect(0, 0, W, H);
    ctx.font = "12px system-ui, sans-serif";
    if (!history || !history.length) return;
    const xs = history.map((h) => h.generation);
    const sc = history.map((h) => h.best_score);
    const id = history.map((h) => h.best_identity).filter((v) => typeof v === "number");
    const x0 = Math.min(0, ...xs), x1 = Math.max(1, ...xs);
    let s0 = Math.min(...sc), s1 = Math.max(...sc);
    if (s1 - s0 < 1e-6) { s0 -= 0.05; s1 += 0.05; }
    const pad = (s1 - s0) * 0.08; s0 -= pad; s1 += pad;
    const X = (v) => L + (W - L - R) * (v - x0) / (x1 - x0);
    const Ys = (v) => T + (H - T - B) * (1 - (v - s0) / (s1 - s0));
    const Yi = (v) => T + (H - T - B) * (1 - v / 1.05);
    ctx.strokeStyle = "#c9d1d9"; ctx.lineWidth = 1;
    ctx.strokeRect(L, T, W - L - R, H - T - B);
    ctx.fillStyle = "#5f6b76";
    const digits = Math.min(6, Math.max(2, Math.ceil(-Math.log10((s1 - s0) / 4)) + 1));
    for (let k = 0; k <= 4; k++) {
      const v = s0 + (s1 - s0) * k / 4, y = Ys(v);
      ctx.fillText(v.toFixed(digits), 4, y + 4);
      ctx.fillText((k / 4).toFixed(2), W - R + 6, Yi(k / 4) + 4);
    }
    ctx.fillText("generation", (W - L - R) / 2 + L - 28, H - B + 16);
    ctx.fillText(String(x0), L - 3, H - B + 14);
    ctx.fillText(String(x1), W - R - 10, H - B + 14);
    if (typeof floor === "number") {
      ctx.setLineDash([4, 4]); ctx.strokeStyle = "#e8a33b";
      ctx.beginPath(); ctx.moveTo(L, Yi(floor)); ctx.lineTo(W - R, Yi(floor)); ctx.stroke(); ctx.setLineDash([]);
    }
    const line = (vals, Y, color) => {
      ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
      vals.forEach((v, i) => { const x = X(xs[i]), y = Y(v); if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y); });
      ctx.stroke();
    };
    line(sc, Ys, "#2f6fdb");
    if (id.length === sc.length) line(id, Yi, "#d9822b");
    const ly = H - 8;  // the legend, under the axes
    ctx.fillStyle = "#2f6fdb"; ctx.fillRect(L, ly - 8, 14, 3); ctx.fillText("best beauty score (left axis)", L + 20, ly);
    if (id.length === sc.length) {
      ctx.fillStyle = "#d9822b"; ctx.fillRect(L + 230, ly - 8, 14, 3); ctx.fillText("its identity (right axis)", L + 250, ly);
    }
    if (typeof floor === "number") {
      ctx.fillStyle = "#b07a1c"; ctx.fillRect(L + 430, ly - 8, 4, 3); ctx.fillRect(L + 437, ly - 8, 4, 3);
      ctx.fillText("identity floor", L + 450, ly);
    }
  }

  setStatus("idle");
  loadBundle();
})();
