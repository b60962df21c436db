// Certify-Net web app: the certify form (the parts that apply, what the user typed kept across model switches,
// gallery pages and errors, number checks, the cost estimate, the drop zone and preview, the drawing, the quick
// answer), a job's live progress, the jobs list's refresh, copy buttons and confirmations.
(function () {
  "use strict";
  const $ = (sel) => document.querySelector(sel);
  const $$ = (sel) => [...document.querySelectorAll(sel)];
  const fmt = (n) => Number(n).toLocaleString("en-US");
  const STORE = "certifynet-form";

  // ---- confirmations and copy buttons (any page)
  $$("form.confirm").forEach((f) => f.addEventListener("submit", (e) => {
    if (!window.confirm(f.dataset.confirm || "Sure?")) e.preventDefault();
  }));
  $$("button.copy").forEach((b) => b.addEventListener("click", async () => {
    const text = document.getElementById(b.dataset.copy).textContent;
    try { await navigator.clipboard.writeText(text); } catch (err) {
      const r = document.createRange(); r.selectNodeContents(document.getElementById(b.dataset.copy));
      const s = window.getSelection(); s.removeAllRanges(); s.addRange(r); document.execCommand("copy");
    }
    b.textContent = "copied"; setTimeout(() => { b.textContent = "copy"; }, 1500);
  }));

  const form = $("#certify-form");
  if (form) certifyForm(form);

  function certifyForm(form) {   // (form.dataset would be its <select name=dataset>: attributes are read by name)
    const saved = JSON.parse(sessionStorage.getItem(STORE) || "{}");
    const touched = new Set(saved.touched || []);
    const canvas = $("#canvas");
    let drawn = false;

    const methods = () => $$("input[name=methods]:checked").map((el) => el.value);
    const kind = () => (form.querySelector("input[name=input_kind]:checked") || {}).value || "gallery";
    const showParts = () => {
      const m = methods(), k = kind();
      const on = { gallery: k === "gallery", batch: k === "batch", upload: k === "upload", draw: k === "draw",
                   dsrs: m.some((x) => x.endsWith("dsrs")), iss: m.some((x) => x.startsWith("iss")),
                   sequential: m.includes("sequential"),
                   n0: $("#select").value === "n0" && m.some((x) => !x.startsWith("iss")) };
      $$("[class*='for-']").forEach((el) => {
        const parts = [...el.classList].filter((c) => c.startsWith("for-")).map((c) => c.slice(4));
        el.hidden = !parts.some((p) => on[p]);   // shown when any of its parts applies
      });
      const n = parseInt($("#N").value, 10);
      const pilot = $("#iss_n0");
      if (pilot && n > 0) pilot.placeholder = String(Math.min(parseInt(pilot.dataset.default, 10), n));
    };

    // ---- browser-side number checks (the server checks again; these answer before a round trip)
    const check = () => {
      $$("#certify-form input[type=number]").forEach((el) => {
        let msg = "";
        const v = parseFloat(el.value);
        if (el.value !== "" && !Number.isNaN(v)) {
          if (el.dataset.exclusiveMin !== undefined && v <= parseFloat(el.dataset.exclusiveMin)) msg = `must be > ${el.dataset.exclusiveMin}`;
          if (el.dataset.exclusiveMax !== undefined && v >= parseFloat(el.dataset.exclusiveMax)) msg = `must be < ${el.dataset.exclusiveMax}`;
        }
        el.setCustomValidity(msg);
      });
      const n = parseInt($("#N").value, 10);
      for (const id of ["N0", "iss_n0"]) {
        const el = document.getElementById(id);
        if (el && !el.closest("[hidden]") && el.value !== "" && n > 0 && parseInt(el.value, 10) > n) {
          el.setCustomValidity(`must be at most N = ${n}`);
        }
      }
      $("#method-np").setCustomValidity(methods().length ? "" : "choose at least one method");
    };

    // ---- what the user typed: kept in sessionStorage (fields, the drawing, the file)
    const fields = () => {
      const out = {};
      for (const [k, v] of new FormData(form).entries()) {
        if (v instanceof File || k === "drawing") continue;
        (out[k] = out[k] || []).push(v);
      }
      return out;
    };
    const save = () => {
      const data = { touched: [...touched], fields: fields(), drawing: drawn ? canvas.toDataURL("image/png") : "",
                     file: saved.file || null };
      try { sessionStorage.setItem(STORE, JSON.stringify(data)); } catch (err) { /* full: keep going */ }
    };
    const setField = (name, values) => {
      const els = $$(`#certify-form [name="${name}"]`);
      els.forEach((el) => {
        if (el.type === "checkbox" || el.type === "radio") el.checked = values.includes(el.value);
        else if (el.type !== "file" && el.type !== "hidden") el.value = values[0];
      });
    };
    const navigate = (changes) => {   // another model or gallery page: carry every touched field
      save();
      const q = new URLSearchParams();
      const f = fields();
      for (const name of new Set([...touched, "input_kind", "idx", "dataset"])) (f[name] || []).forEach((v) => q.append(name, v));
      for (const [k, v] of Object.entries(changes)) q.set(k, v);
      window.location = "?" + q.toString();
    };

    if (form.getAttribute("data-posted") !== "yes" && saved.fields) {   // a GET: restore what was typed (a POST re-render has it)
      for (const name of touched) if (saved.fields[name] && name !== "model" && name !== "page") setField(name, saved.fields[name]);
    }
    form.addEventListener("input", (e) => { if (e.target.name) touched.add(e.target.name); save(); });
    form.addEventListener("change", (e) => { if (e.target.name) touched.add(e.target.name); showParts(); check(); save(); estimate(); });
    $("#model").addEventListener("change", (e) => navigate({ model: e.target.value }));
    $$(".pager-link").forEach((a) => a.addEventListener("click", (e) => {
      e.preventDefault();
      navigate({ model: $("#model").value, page: new URL(a.href).searchParams.get("page") });
    }));
    $("#reset-form").addEventListener("click", () => {
      sessionStorage.removeItem(STORE);
      window.location = "?model=" + encodeURIComponent($("#model").value);
    });

    // ---- the drawing
    if (canvas) {
      const ctx = canvas.getContext("2d");
      let down = false, last = null;
      const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height); drawn = false; };
      clear();
      const restore = (url) => {
        if (!url) return;
        const img = new Image();
        img.onload = () => { ctx.drawImage(img, 0, 0, canvas.width, canvas.height); drawn = true; $("#drawing").value = url; };
        img.src = url;
      };
      restore($("#drawing").value || saved.drawing);
      const at = (e) => {
        const r = canvas.getBoundingClientRect(), p = e.touches ? e.touches[0] : e;
        return [(p.clientX - r.left) * canvas.width / r.width, (p.clientY - r.top) * canvas.height / r.height];
      };
      const stroke = (e) => {
        if (!down) return;
        e.preventDefault();
        const p = at(e);
        ctx.strokeStyle = "#fff"; ctx.lineWidth = 20; ctx.lineCap = "round"; ctx.lineJoin = "round";
        ctx.beginPath(); ctx.moveTo(...(last || p)); ctx.lineTo(...p); ctx.stroke();
        last = p; drawn = true;
      };
      const start = (e) => { down = true; last = null; $("#kind-draw").checked = true; showParts(); stroke(e); };
      const end = () => {
        if (down) { $("#drawing").value = drawn ? canvas.toDataURL("image/png") : ""; save(); preview(); }
        down = false; last = null;
      };
      canvas.addEventListener("mousedown", start); canvas.addEventListener("mousemove", stroke);
      window.addEventListener("mouseup", end);
      canvas.addEventListener("touchstart", start); canvas.addEventListener("touchmove", stroke);
      canvas.addEventListener("touchend", end);
      $("#clear-canvas").addEventListener("click", () => { clear(); $("#drawing").value = ""; save(); });
    }
    const syncDrawing = () => { if (canvas) $("#drawing").value = drawn ? canvas.toDataURL("image/png") : ""; };

    // ---- the file: a drop zone, kept in sessionStorage (small files) so that a reload or an error keeps it
    const fileInput = $("#image-file");
    const keepFile = (file) => {
      if (!file || file.size > 3 * 2 ** 20) { saved.file = null; save(); return; }
      const reader = new FileReader();
      reader.onload = () => { saved.file = { name: file.name, type: file.type, data: reader.result }; save(); };
      reader.readAsDataURL(file);
    };
    const setFile = (file) => {
      const dt = new DataTransfer(); dt.items.add(file); fileInput.files = dt.files;
    };
    if (fileInput && !fileInput.files.length && saved.file) {   // decoded here: the CSP allows no fetch of data: URLs
      const bytes = atob(saved.file.data.split(",")[1] || "");
      const buf = new Uint8Array(bytes.length);
      for (let i = 0; i < bytes.length; i++) buf[i] = bytes.charCodeAt(i);
      setFile(new File([buf], saved.file.name, { type: saved.file.type }));
      preview();
    }
    if (fileInput) {
      fileInput.addEventListener("change", () => { $("#kind-upload").checked = true; showParts(); keepFile(fileInput.files[0]); preview(); });
      const drop = $("#drop");
      ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
      ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
      drop.addEventListener("drop", (e) => {
        e.preventDefault();
        if (e.dataTransfer.files.length) { setFile(e.dataTransfer.files[0]); fileInput.dispatchEvent(new Event("change", { bubbles: true })); }
      });
    }
    $$("input[name=idx]").forEach((el) => el.addEventListener("change", () => {
      $("#kind-gallery").checked = true; showParts(); preview();
    }));

    // ---- preview: what the model sees, and the base classifier's own prediction f(x)
    let previewSeq = 0;
    async function preview() {
      const k = kind();
      if (k === "batch") return;
      syncDrawing();
      const seq = ++previewSeq;
      try {
        const r = await fetch(form.getAttribute("data-preview-url"), { method: "POST", body: new FormData(form) });
        const s = await r.json();
        if (seq !== previewSeq) return;
        const box = $("#preview");
        if (s.error) { $("#preview-text").textContent = s.error; $("#preview-image").hidden = true; box.hidden = false; return; }
        $("#preview-image").src = s.image; $("#preview-image").hidden = false;
        const top = s.top.map(([c, p]) => `${c}: ${(100 * p).toFixed(1)}%`).join(", ");
        $("#preview-text").textContent = `what the model sees${s.note ? " (" + s.note + ")" : ""}; the base classifier f alone, without noise, predicts class ${s.prediction} (${top})`;
        box.hidden = false;
      } catch (err) { /* the next change tries again */ }
    }

    // ---- the cost, from the server's plan of the job (the same numbers the job page will count)
    let estimateTimer = null;
    function estimate() {
      clearTimeout(estimateTimer);
      estimateTimer = setTimeout(async () => {
        const body = new FormData(form); body.delete("image"); body.delete("drawing");
        try {
          const s = await (await fetch(form.getAttribute("data-estimate-url"), { method: "POST", body })).json();
          $("#estimate").textContent = s.error ? s.error :
            `${s.exact ? "" : "at most "}${fmt(s.passes_per_input)} forward passes per input` +
            (s.inputs > 1 ? `, ${s.exact ? "" : "at most "}${fmt(s.total)} for the ${fmt(s.inputs)} inputs` : "") +
            (s.methods.length > 1 ? ` (${s.methods.join(", ")} on shared counts where they allow)` : "");
        } catch (err) { /* keep the last text */ }
      }, 250);
    }

    $("#pilot-estimate").addEventListener("click", async () => {
      const body = new FormData(form); syncDrawing(); body.set("drawing", $("#drawing").value);
      const out = $("#pilot-text"); out.textContent = "running a pilot…";
      try {
        const s = await (await fetch(form.getAttribute("data-estimate-url") + "?pilot=1", { method: "POST", body })).json();
        if (s.error || !s.pilot) { out.textContent = s.error || "no estimate"; return; }
        const p = s.pilot;
        out.textContent = `${fmt(Math.round(p.passes_per_second))} forward passes per second on ${p.device}; ` +
          `${p.exact ? "" : "expected "}${fmt(Math.round(p.passes_per_input))} per input; ` +
          `about ${p.seconds < 120 ? Math.round(p.seconds) + " s" : Math.round(p.seconds / 60) + " min"} for the ${fmt(p.inputs)} input${p.inputs === 1 ? "" : "s"}`;
      } catch (err) { out.textContent = "no estimate"; }
    });

    // ---- the quick answer: a small job on the model's warm worker, answered within the request
    const quick = async (changes) => {
      syncDrawing(); check();
      const body = new FormData(form);
      for (const [k, v] of Object.entries(changes)) body.set(k, v);
      if (kind() === "batch") body.set("input_kind", "gallery");
      const out = $("#quick-result");
      out.hidden = false; out.className = "quick-result busy"; out.textContent = "asking…";
      const t0 = performance.now();
      try {
        const s = await (await fetch(form.getAttribute("data-quick-url"), { method: "POST", body })).json();
        const ms = performance.now() - t0;
        out.className = "quick-result"; out.dataset.ms = ms.toFixed(1); out.dataset.state = s.state || "error";
        if (s.error && !s.runs) { out.classList.add("error"); out.textContent = s.error; return; }
        out.replaceChildren();
        for (const run of s.runs || []) {
          const row = run.rows[0] || {};
          const p = document.createElement("p"); p.className = "answer"; p.dataset.method = run.method;
          const head = document.createElement("b");
          head.textContent = run.method === "sequential"
            ? `${row.decisions || ""}: ` + (row.radius > 0 ? `certified at r = ${row.radius}` : "not certified at the radius asked")
            : (row.predict < 0 ? "abstain" : `class ${row.predict}, R = ${Number(row.radius).toFixed(4)}`);
          p.append(head, ` (${fmt(row.samples || 0)} forward passes; answered in ${(ms / 1000).toFixed(2)} s). `);
          if (run.answer) p.append(run.answer.sentence + (run.answer.cap ? " ⚑ " + run.answer.cap : "") + (run.answer.mismatch ? " ⚠ " + run.answer.mismatch : ""));
          out.append(p);
        }
        const link = document.createElement("a"); link.href = s.url; link.textContent = `job ${s.id} (${s.state})`; link.id = "quick-job";
        out.append(link);
        if (s.error) { const e = document.createElement("p"); e.className = "error"; e.textContent = s.error; out.append(e); }
        $("#quick-full").hidden = false;
      } catch (err) { out.className = "quick-result error"; out.textContent = "no answer from the server"; }
    };
    $("#quick-ask").addEventListener("click", () => quick({ methods: "sequential", radii: $("#quick-r").value }));
    $("#quick-look").addEventListener("click", () => quick({ methods: "np", N: $("#quick-n").value }));
    $("#full-certificate").addEventListener("click", () => {
      $("#N").value = "100000"; touched.add("N");
      if (!methods().length) $("#method-np").checked = true;
      check(); save();
      if (form.reportValidity()) form.requestSubmit($("#certify-submit"));
    });

    form.addEventListener("submit", (e) => {
      syncDrawing(); check(); save();
      if (!form.checkValidity()) { e.preventDefault(); form.reportValidity(); }
    });
    showParts(); check(); estimate();
    if (kind() !== "batch" && (form.querySelector("input[name=idx]:checked") || drawn)) preview();
  }

  // ---- a job: poll its status, reload when it ends
  const job = $("#job");
  if (job && job.dataset.final === "no") {
    const poll = async () => {
      try {
        const s = await (await fetch(job.dataset.statusUrl, { cache: "no-store" })).json();
        const bar = $("#progress");
        bar.max = s.total || 1; bar.value = s.passes;
        let text = `${fmt(s.passes)} of ${s.exact ? "" : "≤ "}${fmt(s.total)} forward passes · ${s.inputs_done} of ${s.inputs} input${s.inputs === 1 ? "" : "s"}`;
        if (s.stages > 1) text += ` · stage ${s.stage_index} of ${s.stages}`;
        if (s.eta_s !== null) text += ` · ETA ${Math.round(s.eta_s)} s`;
        if (s.queue_position) text += ` · waiting, place ${s.queue_position} in the queue`;
        if (s.stage && s.state === "running") text += ` · ${s.stage}`;
        $("#progress-text").textContent = text;
        $("#job-state").textContent = s.state;
        if (!["queued", "running"].includes(s.state)) { window.location.reload(); return; }
      } catch (err) { /* the server may be restarting: try again */ }
      setTimeout(poll, 1000);
    };
    setTimeout(poll, 1000);
  }

  // ---- the jobs list: refresh while jobs run (the ticked boxes survive the reload)
  const table = $("#jobs-table");
  if (table) {
    const TICKS = "certifynet-ticked";
    const ticked = new Set(JSON.parse(sessionStorage.getItem(TICKS) || "[]"));
    $$("input[name=jobs]").forEach((el) => {
      el.checked = el.checked || ticked.has(el.value);
      el.addEventListener("change", () => {
        if (el.checked) ticked.add(el.value); else ticked.delete(el.value);
        sessionStorage.setItem(TICKS, JSON.stringify([...ticked]));
      });
    });
    const shown = Object.fromEntries($$(".job-row").map((tr) => [tr.dataset.id, tr.dataset.state]));
    const active = () => Object.values(shown).some((st) => st === "queued" || st === "running");
    const refresh = async () => {
      try {
        const s = await (await fetch(table.dataset.api, { cache: "no-store" })).json();
        const changed = s.jobs.some((j) => shown[j.id] !== j.state) || s.jobs.length !== Object.keys(shown).length;
        if (changed) { window.location.reload(); return; }
        for (const j of s.jobs) {
          const cell = document.querySelector(`.job-row[data-id="${j.id}"] .passes`);
          if (cell) cell.textContent = `${fmt(j.progress.passes)} / ${fmt(j.progress.total)}`;
        }
      } catch (err) { /* try again */ }
      setTimeout(refresh, active() ? 1000 : 3000);
    };
    setTimeout(refresh, active() ? 1000 : 3000);
  }
})();
