// ecgrisk review page: shows the next ECG at once from a prefetched buffer, writes each
// judgement through the JSON API (session cookie + CSRF header), keyboard shortcuts.
"use strict";
(function () {
  const app = document.getElementById("app");
  const mode = app.dataset.mode;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const labels = JSON.parse(document.getElementById("labels").textContent);
  const describe = Object.fromEntries(labels.map((l) => [l.name, l.description]));
  const $ = (id) => document.getElementById(id);
  const PREFETCH = 4;

  let buffer = [];          // next ECGs from the server, buffer[0] is on screen
  const skipped = [];       // skipped this session only: the store decides what comes back
  const sent = new Set();   // judged from this page; a queue answer in flight may still list them
  let marks = {};           // statement -> "right" | "wrong"
  let missed = [];
  let choice = null;        // comparison mode: "a" | "b" | "tie"
  let busy = false;
  let shownId = null;

  function showError(text) {
    const el = $("error");
    el.textContent = text;
    el.classList.toggle("hidden", !text);
  }

  async function call(url, options) {
    const res = await fetch(url, Object.assign({ credentials: "same-origin" }, options || {}));
    if (res.status === 401) { window.location.assign("/login"); throw new Error("signed out"); }
    const body = await res.json().catch(() => ({}));
    return { res, body };
  }

  function setProgress(p) {
    $("progress-text").textContent = `${p.judged} of ${p.total} judged`;
    $("progress-fill").style.width = p.total ? `${(100 * p.judged) / p.total}%` : "0";
  }

  async function refill() {
    const params = new URLSearchParams({ limit: String(PREFETCH) });
    skipped.forEach((id) => params.append("skip", id));
    const { res, body } = await call(`/api/queue?${params}`);
    if (!res.ok) { showError(body.error || `queue: HTTP ${res.status}`); return; }
    setProgress(body.progress);
    // the ECG on screen stays in front even if the server's order moved on meanwhile
    const current = shownId !== null ? buffer[0] : null;
    const rest = body.items.filter(
      (it) => !sent.has(it.ecg_id) && (!current || it.ecg_id !== current.ecg_id));
    buffer = current ? [current, ...rest] : rest;
    rest.forEach((it) => { new Image().src = it.plot_url; });  // prefetch the next plots
    if (!current) show();
  }

  function fmtPct(p) { return `${(100 * p).toFixed(p >= 0.995 || p < 0.005 ? 0 : 1)}%`; }

  function statementRow(s, i) {
    const li = document.createElement("li");
    li.className = "statement";
    li.dataset.name = s.name;
    const key = document.createElement("kbd");
    key.textContent = i < 9 ? String(i + 1) : "";
    const name = document.createElement("div");
    name.className = "name";
    const code = document.createElement("strong");
    code.textContent = s.name;
    name.appendChild(code);
    if (describe[s.name]) {
      const d = document.createElement("span");
      d.className = "desc";
      d.textContent = describe[s.name];
      name.appendChild(d);
    }
    const prob = document.createElement("div");
    prob.className = "prob";
    const bar = document.createElement("div");
    bar.className = "pbar";
    const fill = document.createElement("div");
    fill.style.width = `${100 * s.p}%`;
    bar.appendChild(fill);
    const num = document.createElement("span");
    num.textContent = fmtPct(s.p);
    prob.append(bar, num);
    const toggle = document.createElement("div");
    toggle.className = "toggle";
    toggle.setAttribute("role", "group");
    for (const m of ["right", "wrong"]) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = `mark ${m}`;
      b.dataset.mark = m;
      b.textContent = m === "right" ? "✓ Right" : "✗ Wrong";
      b.addEventListener("click", () => { marks[s.name] = m; renderMarks(); });
      toggle.appendChild(b);
    }
    li.append(key, name, prob, toggle);
    return li;
  }

  function renderMarks() {
    document.querySelectorAll("#statements .statement").forEach((li) => {
      const m = marks[li.dataset.name];
      li.classList.toggle("is-wrong", m === "wrong");
      li.querySelectorAll(".mark").forEach((b) => {
        b.classList.toggle("active", b.dataset.mark === m);
        b.setAttribute("aria-pressed", String(b.dataset.mark === m));
      });
    });
  }

  function renderMissed(item) {
    const sel = $("missed-select");
    sel.length = 1;
    item.statements.filter((s) => !s.positive && !missed.includes(s.name)).forEach((s) => {
      const o = document.createElement("option");
      o.value = s.name;
      o.textContent = `${s.name}${describe[s.name] ? " — " + describe[s.name] : ""}  (p ${fmtPct(s.p)})`;
      sel.appendChild(o);
    });
    const ul = $("missed");
    ul.replaceChildren();
    missed.forEach((name) => {
      const li = document.createElement("li");
      li.textContent = name;
      const x = document.createElement("button");
      x.type = "button";
      x.className = "chip-x";
      x.setAttribute("aria-label", `remove ${name}`);
      x.textContent = "×";
      x.addEventListener("click", () => { missed = missed.filter((m) => m !== name); renderMissed(item); });
      li.appendChild(x);
      ul.appendChild(li);
    });
  }

  function renderReading(id, statements) {
    const ul = document.querySelector(`#${id} ul`);
    ul.replaceChildren();
    if (!statements.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = "No statement";
      ul.appendChild(li);
    }
    statements.forEach((s) => {
      const li = document.createElement("li");
      const n = document.createElement("strong");
      n.textContent = s.name;
      const d = document.createElement("span");
      d.className = "desc";
      d.textContent = describe[s.name] || "";
      const p = document.createElement("span");
      p.className = "p";
      p.textContent = fmtPct(s.p);
      li.append(n, d, p);
      ul.appendChild(li);
    });
  }

  function renderChoice() {
    document.querySelectorAll("[data-choice]").forEach((b) => {
      b.classList.toggle("active", b.dataset.choice === choice);
      b.setAttribute("aria-pressed", String(b.dataset.choice === choice));
    });
    $("submit").disabled = choice === null;
  }

  function show() {
    const item = buffer[0];
    const done = !item;
    $("done").classList.toggle("hidden", !done);
    $("ecg").classList.toggle("hidden", done);
    $("panel").classList.toggle("hidden", done);
    if (done) { shownId = null; return; }
    if (shownId === item.ecg_id) return;
    shownId = item.ecg_id;
    marks = {};
    missed = [];
    choice = null;
    $("ecg-title").textContent = item.ecg_id;
    // 90 and over as one group, as PTB-XL records them (HIPAA: exact ages above 89 are identifying)
    $("ecg-age").textContent = item.age == null ? "unknown"
      : item.age >= 90 ? "≥ 90 y" : `${Math.round(item.age)} y`;
    $("ecg-sex").textContent = { M: "male", F: "female" }[item.sex] || "unknown";
    $("ecg-rec").textContent = `${item.duration_s} s · ${item.fs} Hz`;
    $("ecg-pos").textContent = `#${item.position}`;
    $("ecg-plot").src = item.plot_url;
    // the evidence overlay: same sheet, trace coloured where the top statement's evidence lies
    const why = $("show-evidence");
    why.classList.toggle("hidden", !item.evidence_url);
    why.setAttribute("aria-pressed", "false");
    $("ecg-overlay").classList.add("hidden");
    $("ecg-overlay").removeAttribute("src");
    if (mode === "compare") {
      renderReading("reading-a", item.readings.a);
      renderReading("reading-b", item.readings.b);
      renderChoice();
    } else {
      const shown = item.statements.filter((s) => s.positive);
      // every shown statement starts as "right": the annotator flips the ones they reject
      shown.forEach((s) => { marks[s.name] = "right"; });
      const ol = $("statements");
      ol.replaceChildren(...shown.map(statementRow));
      $("no-statements").classList.toggle("hidden", shown.length > 0);
      renderMarks();
      const others = item.statements.filter((s) => !s.positive);
      const top = others.slice(0, 6).map((s) => `${s.name} ${fmtPct(s.p)}`);
      if (others.length > 6) top.push(`+${others.length - 6} more`);
      $("others").textContent = top.join(" · ") || "none";
      renderMissed(item);
    }
    document.activeElement && document.activeElement.blur && document.activeElement.blur();
  }

  function advance() {
    buffer.shift();
    shownId = null;
    show();
    refill().catch((e) => showError(String(e)));
  }

  async function submit() {
    const item = buffer[0];
    if (!item || busy) return;
    let payload;
    if (mode === "compare") {
      if (!choice) { showError("Choose reading A, reading B or tie first."); return; }
      payload = { ecg_id: item.ecg_id, choice };
    } else {
      payload = { ecg_id: item.ecg_id, marks, missed };
    }
    busy = true;
    $("submit").disabled = true;
    try {
      const { res, body } = await call("/api/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(payload),
      });
      if (res.status === 201 || res.status === 409) {
        sent.add(item.ecg_id);
        showError("");
        if (body.progress) setProgress(body.progress);
        advance();
      } else {
        showError(body.error || `HTTP ${res.status}`);
      }
    } catch (e) {
      showError(`Not saved: ${e}`);
    } finally {
      busy = false;
      $("submit").disabled = mode === "compare" && choice === null;
    }
  }

  function skip() {
    if (!buffer[0]) return;
    skipped.push(buffer[0].ecg_id);
    advance();
  }

  function addMissed() {
    const sel = $("missed-select");
    if (sel.value && !missed.includes(sel.value)) {
      missed.push(sel.value);
      renderMissed(buffer[0]);
    }
  }

  $("submit").addEventListener("click", submit);
  $("skip").addEventListener("click", skip);
  if (mode === "compare") {
    document.querySelectorAll("[data-choice]").forEach((b) =>
      b.addEventListener("click", () => { choice = b.dataset.choice; renderChoice(); }));
  } else {
    $("missed-add").addEventListener("click", addMissed);
  }

  document.addEventListener("keydown", (ev) => {
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const inSelect = ev.target && ev.target.id === "missed-select";
    if (inSelect) {
      if (ev.key === "Enter") { ev.preventDefault(); addMissed(); }
      if (ev.key === "Escape") ev.target.blur();
      return;
    }
    if (ev.target && ["INPUT", "TEXTAREA"].includes(ev.target.tagName)) return;
    const key = ev.key.toLowerCase();
    if (ev.key === "Enter") { ev.preventDefault(); submit(); return; }
    if (key === "n") { skip(); return; }
    if (mode === "compare") {
      if (key === "a" || key === "b") { choice = key; renderChoice(); }
      else if (key === "t") { choice = "tie"; renderChoice(); }
      return;
    }
    if (key === "m") { ev.preventDefault(); $("missed-select").focus(); return; }
    if (/^[1-9]$/.test(key)) {
      const li = document.querySelectorAll("#statements .statement")[Number(key) - 1];
      if (li) {
        const name = li.dataset.name;
        marks[name] = marks[name] === "wrong" ? "right" : "wrong";
        renderMarks();
      }
    }
  });

  refill().catch((e) => showError(String(e)));
  // shows or hides the evidence overlay of the ECG on screen (rendered on first request)
  document.addEventListener("click", (ev) => {
    const btn = ev.target.closest("#show-evidence");
    if (!btn || !shownId) return;
    const overlay = $("ecg-overlay");
    const on = btn.getAttribute("aria-pressed") !== "true";
    btn.setAttribute("aria-pressed", String(on));
    if (on && !overlay.getAttribute("src")) overlay.src = `/evidence/${shownId}.png`;
    overlay.classList.toggle("hidden", !on);
  });
})();
