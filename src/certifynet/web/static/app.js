// Certify-Net web app: show the form parts that apply, draw on the canvas, and follow a running job.
(function () {
  "use strict";
  const $ = (sel) => document.querySelector(sel);

  // ---- certify form
  const form = $("#certify-form");
  if (form) {
    const method = $("#method");
    const showParts = () => {
      const kind = (form.querySelector("input[name=input_kind]:checked") || {}).value || "gallery";
      const m = method.value;
      const on = { gallery: kind === "gallery", batch: kind === "batch", upload: kind === "upload", draw: kind === "draw",
                   dsrs: m.endsWith("dsrs"), iss: m.startsWith("iss") };
      document.querySelectorAll("[class*='for-']").forEach((el) => {
        const parts = [...el.classList].filter((c) => c.startsWith("for-")).map((c) => c.slice(4));
        el.hidden = !parts.some((p) => on[p]);   // shown when any of its parts applies
      });
    };
    form.addEventListener("change", showParts);
    showParts();
    $("#model").addEventListener("change", (e) => {
      window.location = "?model=" + encodeURIComponent(e.target.value);
    });
    document.querySelectorAll("input[name=idx]").forEach((el) => el.addEventListener("change", () => {
      $("#kind-gallery").checked = true; showParts();
    }));

    const canvas = $("#canvas");
    if (canvas) {
      const ctx = canvas.getContext("2d");
      let drawn = false, down = false, last = null;
      const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height); drawn = false; };
      clear();
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
      const end = () => { down = false; last = null; };
      canvas.addEventListener("mousedown", start); canvas.addEventListener("mousemove", stroke);
      window.addEventListener("mouseup", end);
      canvas.addEventListener("touchstart", start); canvas.addEventListener("touchmove", stroke);
      canvas.addEventListener("touchend", end);
      $("#clear-canvas").addEventListener("click", clear);
      form.addEventListener("submit", () => { $("#drawing").value = drawn ? canvas.toDataURL("image/png") : ""; });
    }
  }

  // ---- a job: poll its status, reload when it ends
  const job = $("#job");
  if (job && job.dataset.final === "no") {
    const fmt = (n) => Number(n).toLocaleString("en-US");
    const poll = async () => {
      try {
        const s = await (await fetch(job.dataset.statusUrl, { cache: "no-store" })).json();
        const bar = $("#progress");
        bar.max = s.total || 1; bar.value = s.passes;
        let text = `${fmt(s.passes)} of ${s.exact ? "" : "≈ "}${fmt(s.total)} forward passes · ${s.inputs_done} of ${s.inputs} input${s.inputs === 1 ? "" : "s"}`;
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
})();
