/* The service's page: upload (any size, through the uploads route), submit, poll, show the timeline.
 *
 * Nothing is stored by the service for the page: the API key goes with each request (x-api-key header) and,
 * only if "remember" is ticked, into this browser's localStorage. Recent jobs are kept in localStorage too,
 * under a hash of the key (the API has no list-jobs route: a job is reopened by its request_id).
 */
(function () {
  "use strict";
  const API = "audio/generic/api/v2/";  // relative: the page is served at the API's root (any stage prefix)
  const POLL_MS = 1500;
  const RECENT_MAX = 30;
  const $ = (id) => document.getElementById(id);
  let chosenFile = null;
  let view = null;

  // ---- key and recent jobs (localStorage) ----
  const keyInput = $("api-key");
  const remember = $("remember-key");
  keyInput.value = localStorage.getItem("diarizer.apiKey") || "";
  remember.checked = Boolean(keyInput.value);
  function storeKey() {
    if (remember.checked && keyInput.value) localStorage.setItem("diarizer.apiKey", keyInput.value);
    else localStorage.removeItem("diarizer.apiKey");
  }
  remember.addEventListener("change", storeKey);
  keyInput.addEventListener("change", () => { storeKey(); showRecent(); });
  let keyTyping = null;
  keyInput.addEventListener("input", () => { clearTimeout(keyTyping); keyTyping = setTimeout(checkVoiceprints, 400); });

  async function keyTag(key) {
    if (!key) return "";
    if (window.crypto && crypto.subtle) {
      const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(key));
      return Array.from(new Uint8Array(digest).slice(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
    }
    let h = 0;  // not a secure context (plain http on a LAN name): a weak tag, still not the key itself
    for (const c of key) h = (h * 31 + c.charCodeAt(0)) >>> 0;
    return "w" + h.toString(16);
  }
  function loadRecent() {
    try { return JSON.parse(localStorage.getItem("diarizer.recentJobs") || "[]"); } catch (e) { return []; }
  }
  async function addRecent(entry) {
    const tag = await keyTag(keyInput.value);
    const jobs = loadRecent().filter((j) => !(j.key === tag && j.request_id === entry.request_id));
    jobs.unshift({ ...entry, key: tag });
    localStorage.setItem("diarizer.recentJobs", JSON.stringify(jobs.slice(0, RECENT_MAX)));
    showRecent();
  }
  async function showRecent() {
    const tag = await keyTag(keyInput.value);
    const list = $("recent");
    list.replaceChildren();
    const mine = loadRecent().filter((j) => j.key === tag);
    if (!tag || !mine.length) {
      list.append(Object.assign(document.createElement("li"), { className: "muted",
        textContent: tag ? "No jobs yet with this key." : "Type your API key to see its jobs." }));
      return;
    }
    for (const job of mine) {
      const li = document.createElement("li");
      const open = Object.assign(document.createElement("button"), { type: "button", textContent: job.name || job.request_id });
      open.addEventListener("click", () => reopen(job));
      li.append(open, Object.assign(document.createElement("span"), { className: "muted", textContent: job.request_id }),
        Object.assign(document.createElement("span"), { className: "muted when", textContent: new Date(job.created).toLocaleString() }));
      list.append(li);
    }
  }

  // ---- HTTP ----
  async function api(method, path, body) {
    const response = await fetch(API + path, {
      method, headers: { "x-api-key": keyInput.value, ...(body ? { "Content-Type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    let data = null;
    try { data = await response.json(); } catch (e) { /* an empty or HTML body */ }
    if (!response.ok) {
      const message = data && data.error ? data.error.message : `HTTP ${response.status}`;
      throw Object.assign(new Error(message), { status: response.status });
    }
    return data;
  }

  function put(url, file, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();  // fetch() cannot report upload progress
      xhr.open("PUT", url);
      xhr.upload.addEventListener("progress", (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); });
      xhr.addEventListener("load", () => (xhr.status >= 200 && xhr.status < 300 ? resolve()
        : reject(new Error(`the upload failed (HTTP ${xhr.status}) ${xhr.responseText.slice(0, 200)}`))));
      xhr.addEventListener("error", () => reject(new Error("the upload failed (network error)")));
      xhr.send(file);
    });
  }

  // ---- known voices: "Name known voices" is offered only when the key has enrolled voiceprints ----
  const identify = $("identify");
  let wantIdentify = false;  // the user's choice, restored when the option comes back
  let voiceCheck = 0;
  identify.addEventListener("change", () => { wantIdentify = identify.checked; });
  function offerIdentify(enabled, hint) {
    identify.disabled = !enabled;
    identify.checked = enabled && wantIdentify;
    $("identify-hint").textContent = hint;
  }
  async function checkVoiceprints() {
    const run = ++voiceCheck;
    if (!keyInput.value) { offerIdentify(false, "Type your API key to look for its enrolled voices."); return; }
    // The option keeps its state while looking: a submit meanwhile must not silently drop the user's choice.
    $("identify-hint").textContent = "Looking for enrolled voices…";
    let offer;
    try {
      const names = (await api("GET", "voiceprints")).voiceprints.map((v) => v.name);
      const shown = names.slice(0, 5).join(", ") + (names.length > 5 ? ` and ${names.length - 5} more` : "");
      offer = names.length ? [true, `${names.length} enrolled voice${names.length > 1 ? "s" : ""}: ${shown}`]
        : [false, "No voices are enrolled with this key yet (POST …/voiceprints, or diarize enroll)."];
    } catch (error) {
      offer = [false, error.status === 401 || error.status === 403 ? "The service refused this API key."
        : error.status === 404 || error.status === 501 ? "This service does not keep voiceprints."
          : `Could not look for enrolled voices: ${error.message}`];
    }
    if (run === voiceCheck) offerIdentify(...offer);  // else the key changed meanwhile: a newer check decides
  }
  // Voices enrolled elsewhere (CLI, API) while this tab was in the background show up on return.
  document.addEventListener("visibilitychange", () => { if (!document.hidden) checkVoiceprints(); });

  // ---- progress ----
  function progress(label, fraction, detail) {
    $("progress").hidden = false;
    $("progress-label").textContent = label;
    $("progress-detail").textContent = detail || "";
    const bar = $("progress-bar");
    if (fraction === null) bar.removeAttribute("value"); else bar.value = fraction;
  }
  const size = (n) => (n > 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${Math.ceil(n / 1e3)} kB`);

  // ---- file choice ----
  const drop = $("drop-zone");
  function choose(file) {
    chosenFile = file || null;
    $("file-name").textContent = file ? `${file.name} (${size(file.size)})` : "Choose or drop an audio file";
  }
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("file").click(); } });
  $("file").addEventListener("change", (e) => choose(e.target.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("dragging"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("dragging"); choose(e.dataTransfer.files[0]); });

  function options() {
    const number = (id) => ($(id).value ? Number($(id).value) : undefined);
    // identify/confidence only when asked for: without them the request is exactly the plain one.
    const extras = {};
    if (identify.checked && !identify.disabled) extras.identify = true;
    if ($("confidence").checked) extras.confidence = true;
    return { speakers: number("speakers"), min_speakers: number("min-speakers"), max_speakers: number("max-speakers"),
      exclusive: $("exclusive").checked, ...extras };
  }
  const newId = () => (window.crypto && crypto.randomUUID ? crypto.randomUUID()
    : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 12)}`);

  // ---- the flow: upload -> submit -> poll -> timeline ----
  $("job-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("form-error").textContent = "";
    if (!keyInput.value) { $("form-error").textContent = "Type your API key."; keyInput.focus(); return; }
    if (!chosenFile) { $("form-error").textContent = "Choose an audio file."; drop.focus(); return; }
    const file = chosenFile;
    $("submit").disabled = true;
    try {
      progress("Uploading", 0, size(file.size));
      const upload = await api("POST", "uploads");
      if (file.size > upload.max_bytes) throw new Error(`the file is over the service's limit of ${size(upload.max_bytes)}`);
      await put(upload.upload_url, file, (f) => progress("Uploading", f, `${size(f * file.size)} of ${size(file.size)}`));
      const requestId = newId();
      await api("POST", `async/diarize?request_id=${encodeURIComponent(requestId)}&poll=true`,
        { upload_id: upload.upload_id, ...options() });
      await addRecent({ request_id: requestId, name: file.name, created: Date.now() });
      const job = await poll(requestId);
      show(job, file.name, URL.createObjectURL(file));
    } catch (error) {
      $("form-error").textContent = `Failed: ${error.message}`;
      $("progress").hidden = true;
    } finally {
      $("submit").disabled = false;
    }
  });

  async function poll(requestId) {
    const started = Date.now();
    for (;;) {
      const job = await api("GET", `async/diarize/${encodeURIComponent(requestId)}`);
      if (job.status === "done") { progress("Done", 1, ""); return job; }
      if (job.status === "failed") throw new Error(job.error ? job.error.message : "the job failed");
      const waited = Math.round((Date.now() - started) / 1000);
      progress(job.status === "queued" ? "Queued" : "Diarizing", null, `${waited} s`);
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }

  function show(job, name, audioSrc) {
    $("result").hidden = false;
    $("result-title").textContent = `Timeline: ${name}`;
    const diarized = job.response;
    const named = (diarized.speakers || []).filter((s) => s.name).map((s) => s.name);
    $("result-info").textContent = `${diarized.num_speakers} speakers` +
      (diarized.speakers ? ` (${named.length ? `known: ${named.join(", ")}` : "no known voice"})` : "") +
      `, ${diarized.segments.length} turns · request ${job.request_id}`;
    $("audio-missing").hidden = Boolean(audioSrc);
    const fileId = (name || job.request_id).replace(/\.[^.]+$/, "");
    view = DiarizerTimeline.render($("timeline"), diarized, { audioSrc, fileId });
    $("result").scrollIntoView({ behavior: "smooth", block: "start" });
  }

  async function reopen(entry) {
    $("form-error").textContent = "";
    try {
      const job = await poll(entry.request_id);
      show(job, entry.name, null);
    } catch (error) {
      $("form-error").textContent = `Cannot open ${entry.request_id}: ${error.message}`;
    }
  }
  $("choose-audio").addEventListener("click", () => $("audio-file").click());
  $("audio-file").addEventListener("change", (e) => {
    if (view && e.target.files[0]) { view.setAudio(URL.createObjectURL(e.target.files[0])); $("audio-missing").hidden = true; }
  });

  window.diarizerPage = { get view() { return view; } };  // for the browser test and the console
  showRecent();
  checkVoiceprints();
})();
