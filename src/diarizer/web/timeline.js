/* The timeline of one diarization (one lane per speaker, zoom, scroll, an audio cursor, click to play,
 * rename, downloads). Plain JS, no dependencies, no network: used by the service's page (/) and inlined
 * into the single file `diarize AUDIO --html OUT.html` writes.
 *
 *   const view = DiarizerTimeline.render(element, diarized, {audioSrc, fileId});
 *   diarized = the API's Diarized object: {num_speakers, segments: [{speaker_id, start, end}]}, and with
 *   identification `speakers: [{speaker_id, name, match}]` (+ `speaker_name` per segment), with confidence
 *   `confidence` (0-1) per segment.
 *
 * A speaker's shown name is the user's rename, else the enrolled name the service matched, else its id. The
 * page never makes a name up: only the service's `speakers` list names a speaker.
 */
(function (global) {
  "use strict";

  // Okabe-Ito: distinguishable with the common colour-vision deficiencies (black left out: it is the cursor).
  const PALETTE = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999"];
  const MIN_PX_PER_SECOND = 0.05;
  const MAX_PX_PER_SECOND = 400;
  // How a turn looks for its confidence (the calibrated probability that its speaker is right). At 0.9 and
  // above 98 % of the speech is right (BENCHMARKS.md); below 0.6 the turn is as likely wrong as right.
  // Each band has its own pattern and border, so colour is never the only cue; the value is in every label.
  const CONFIDENCE_BANDS = [
    { level: "high", min: 0.9, label: "sure", range: "90% or more" },
    { level: "medium", min: 0.6, label: "fairly sure", range: "60-89%" },
    { level: "low", min: -Infinity, label: "unsure", range: "under 60%" },
  ];

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "text") node.textContent = value;
      else if (name === "style") Object.assign(node.style, value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value);
    }
    for (const child of children || []) node.append(child);
    return node;
  }

  function clock(seconds) {
    const s = Math.max(0, seconds);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const tail = sec.toFixed(1).padStart(4, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${tail}` : `${m}:${tail}`;
  }

  const percent = (value) => `${Math.round(value * 100)}%`;
  const hasConfidence = (segment) => typeof segment.confidence === "number";
  // On the rounded value, so that the band and the percentage shown never disagree (89.6 % shows as 90 %).
  const confidenceBand = (value) => CONFIDENCE_BANDS.find((band) => Math.round(value * 100) / 100 >= band.min);

  /** speaker_id -> {name, match} for the speakers the service named after an enrolled voiceprint. */
  function enrolled(diarized) {
    const known = {};
    for (const s of diarized.speakers || []) if (s.name) known[s.speaker_id] = { name: s.name, match: s.match };
    return known;
  }

  /** The name a speaker has before any rename: its enrolled name (`known` = enrolled(diarized)), else its id. */
  function defaultName(known, id) {
    return known[id] ? known[id].name : id;
  }

  function speakersInOrder(segments) {
    const seen = [];
    for (const s of segments) if (!seen.includes(s.speaker_id)) seen.push(s.speaker_id);
    return seen;
  }

  function download(name, text, type) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const link = el("a", { href: url, download: name });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  /** The export formats. `names` maps speaker_id -> shown name (enrolled or renamed). */
  const exporters = {
    /** The API's answer as it came (enrolled names, matches, confidence), plus `speaker_names` for the
     *  speakers the user renamed: a reader's rule is speaker_names, else the enrolled name, else the id. */
    json(diarized, names) {
      const known = enrolled(diarized);
      const renamed = Object.fromEntries(Object.entries(names).filter(([id, name]) =>
        name && name !== defaultName(known, id)));
      const doc = Object.assign({}, diarized);
      delete doc.speaker_names;
      if (Object.keys(renamed).length) doc.speaker_names = renamed;
      return JSON.stringify(doc, null, 2) + "\n";
    },
    /** RTTM's 9th field is the confidence: the segment's own when the service gave one. */
    rttm(diarized, names, fileId) {
      const token = (text) => String(text).trim().replace(/\s+/g, "_") || "speaker";
      return diarized.segments.map((s) =>
        `SPEAKER ${token(fileId)} 1 ${s.start.toFixed(3)} ${(s.end - s.start).toFixed(3)} <NA> <NA> ` +
        `${token(names[s.speaker_id] || s.speaker_id)} ${hasConfidence(s) ? s.confidence.toFixed(3) : "<NA>"} <NA>\n`).join("");
    },
    text(diarized, names) {
      return diarized.segments.map((s) =>
        `${clock(s.start)} - ${clock(s.end)}  ${names[s.speaker_id] || s.speaker_id}` +
        `${hasConfidence(s) ? `  (confidence ${percent(s.confidence)})` : ""}\n`).join("");
    },
  };

  function render(root, diarized, options) {
    options = options || {};
    const segments = diarized.segments.slice().sort((a, b) => a.start - b.start);
    const speakers = speakersInOrder(segments);
    const known = enrolled(diarized);
    const defaults = Object.fromEntries(speakers.map((id) => [id, defaultName(known, id)]));
    const names = Object.assign({}, defaults, options.names || {});
    const withConfidence = segments.some(hasConfidence);
    const fileId = options.fileId || "audio";
    let duration = Math.max(options.duration || 0, ...segments.map((s) => s.end), 1);
    let pxPerSecond = 0;
    let stopAt = null;
    let playingTurn = null;
    const colour = (id) => PALETTE[speakers.indexOf(id) % PALETTE.length];

    root.replaceChildren();
    root.classList.add("tl");

    // ---- audio + toolbar ----
    const audio = el("audio", { class: "tl-audio", controls: "", preload: "metadata" });
    // Browsers play WAV, MP3, FLAC, Ogg and M4A, but not AMR, WMA, AVI or a call recorder's G.723.1 WAV, which the
    // service reads: say so rather than leave a player that silently does nothing.
    const unplayable = el("p", { class: "tl-audio-error", role: "status", hidden: "",
      text: "This browser cannot play this recording's format. The timeline and the downloads work without it; " +
            "a WAV, MP3 or M4A copy of the recording plays here." });
    audio.addEventListener("error", () => { if (audio.getAttribute("src")) unplayable.hidden = false; });
    audio.addEventListener("loadedmetadata", () => { unplayable.hidden = true; });
    if (options.audioSrc) audio.src = options.audioSrc;
    const time = el("span", { class: "tl-time", "aria-live": "off", text: `0:00.0 / ${clock(duration)}` });
    const zoomLabel = el("span", { class: "muted" });
    const toolbar = el("div", { class: "tl-toolbar", role: "toolbar", "aria-label": "Timeline" }, [
      el("button", { type: "button", "data-action": "play", text: "Play / pause", onclick: () => togglePlay() }),
      time,
      el("button", { type: "button", "data-action": "zoom-out", "aria-label": "Zoom out", text: "−", onclick: () => zoom(0.5) }),
      el("button", { type: "button", "data-action": "zoom-in", "aria-label": "Zoom in", text: "+", onclick: () => zoom(2) }),
      el("button", { type: "button", "data-action": "fit", text: "Fit", onclick: () => fit() }),
      zoomLabel,
      el("span", { class: "tl-spacer" }),
      el("button", { type: "button", "data-download": "json", text: "JSON",
        onclick: () => download(`${fileId}.json`, exporters.json(diarized, names), "application/json") }),
      el("button", { type: "button", "data-download": "rttm", text: "RTTM",
        onclick: () => download(`${fileId}.rttm`, exporters.rttm(diarized, names, fileId), "text/plain") }),
      el("button", { type: "button", "data-download": "text", text: "List",
        onclick: () => download(`${fileId}.txt`, exporters.text(diarized, names), "text/plain") }),
    ]);

    // ---- lanes ----
    const nameColumn = el("div", { class: "tl-names" }, [el("div", { class: "tl-ruler-label", text: "Speaker" })]);
    const ruler = el("div", { class: "tl-ruler", "aria-hidden": "true" });
    const canvas = el("div", { class: "tl-canvas" }, [ruler]);
    const cursor = el("div", { class: "tl-cursor", "aria-hidden": "true" });
    const scroller = el("div", { class: "tl-scroll", tabindex: "0", "aria-label": "Timeline lanes; arrow keys seek" }, [canvas]);
    const turnButtons = [];
    const summary = el("div", { class: "tl-summary" });

    const nameInputs = {};
    const lanes = {};
    speakers.forEach((id) => {
      const total = segments.filter((s) => s.speaker_id === id).reduce((t, s) => t + s.end - s.start, 0);
      const voice = known[id] ? `enrolled voice ${known[id].name}` +
        (typeof known[id].match === "number" ? `, match ${known[id].match.toFixed(2)}` : "") : "";
      const input = el("input", { type: "text", value: names[id], "data-speaker": id,
        "aria-label": voice ? `Name of ${id} (${voice})` : `Name of ${id}`,
        oninput: (event) => { names[id] = event.target.value.trim() || defaults[id]; relabel(); } });
      if (voice) input.title = `Named by the service after the ${voice}. Type to rename.`;
      nameInputs[id] = input;
      const cells = [el("span", { class: "tl-swatch", style: { background: colour(id) } }), input];
      if (voice) cells.push(el("span", { class: "tl-known", title: input.title,
        "aria-hidden": "true", text: "known" }));
      nameColumn.append(el("div", { class: "tl-name", "data-known": voice ? known[id].name : "" }, cells));
      const lane = el("div", { class: "tl-lane", "data-speaker": id, role: "list" });
      lanes[id] = lane;
      segments.forEach((s, index) => {
        if (s.speaker_id !== id) return;
        const button = el("button", { type: "button", class: "tl-turn", role: "listitem", "data-index": String(index),
          "data-start": String(s.start), "data-end": String(s.end), "data-speaker": id,
          style: { backgroundColor: colour(id) }, onclick: () => playTurn(index) });
        if (hasConfidence(s)) {
          button.dataset.confidence = String(s.confidence);
          button.classList.add(`tl-conf-${confidenceBand(s.confidence).level}`);
        }
        turnButtons[index] = button;
        lane.append(button);
      });
      canvas.append(lane);
      summary.append(el("span", { "data-speaker": id }, [el("span", { class: "tl-swatch", style: { background: colour(id) } }),
        el("span", { class: "tl-summary-name", text: names[id] }), el("span", { class: "muted", text: clock(total) })]));
    });
    canvas.append(cursor);

    // What the focused or hovered turn is, in words, for sighted keyboard users (a screen reader reads the
    // turn's own label, so this line is hidden from it).
    const detail = el("p", { class: "tl-detail", "aria-hidden": "true" });
    const clash = el("p", { class: "tl-clash", role: "alert" });
    const describe = (event) => {
      const turn = event.target.closest && event.target.closest(".tl-turn");
      if (turn) detail.textContent = turn.getAttribute("aria-label");
    };
    canvas.addEventListener("focusin", describe);
    canvas.addEventListener("mouseover", describe);

    const legend = el("div", { class: "tl-legend" });
    if (withConfidence) {
      legend.append(el("span", { class: "tl-legend-title", text: "Confidence that a turn's speaker is right:" }),
        ...CONFIDENCE_BANDS.map((band) => el("span", { class: "tl-legend-item" }, [
          el("span", { class: `tl-legend-swatch tl-conf-${band.level}`, "aria-hidden": "true" }),
          el("span", { text: `${band.label} (${band.range})` })])));
    }
    if (Object.keys(known).length) {
      legend.append(el("span", { class: "tl-legend-item" }, [el("span", { class: "tl-known", "aria-hidden": "true", text: "known" }),
        el("span", { text: "named after an enrolled voice (hover for the match score)" })]));
    }

    const help = el("p", { class: "muted tl-help" });
    help.innerHTML = "Click a turn to play it. Keys on the timeline: <kbd>Space</kbd> play/pause, " +
      "<kbd>←</kbd>/<kbd>→</kbd> 5 s, <kbd>N</kbd>/<kbd>P</kbd> next/previous turn, <kbd>+</kbd>/<kbd>−</kbd> zoom. " +
      "Tab reaches each turn; Enter plays it.";
    root.append(toolbar, audio, unplayable, el("div", { class: "tl-body" }, [nameColumn, scroller]), detail, clash, legend, summary, help);

    function relabel() {
      turnButtons.forEach((b, i) => {
        if (!b) return;
        const s = segments[i];
        let label = `${names[s.speaker_id]}, ${clock(s.start)} to ${clock(s.end)}`;
        if (hasConfidence(s)) label += `, confidence ${percent(s.confidence)} (${confidenceBand(s.confidence).label})`;
        b.setAttribute("aria-label", label);
        b.title = label;
      });
      for (const id of speakers) {
        lanes[id].setAttribute("aria-label", known[id] && names[id] === known[id].name
          ? `${names[id]} (enrolled voice)` : names[id]);
      }
      summary.querySelectorAll("[data-speaker]").forEach((span) => {
        span.querySelector(".tl-summary-name").textContent = names[span.dataset.speaker];
      });
      // Renames may give two speakers one name: the downloads would merge them, so say so.
      const shared = speakers.filter((id) => speakers.some((other) => other !== id && names[other] === names[id]));
      for (const id of speakers) {
        nameInputs[id].classList.toggle("tl-name-clash", shared.includes(id));
        if (shared.includes(id)) nameInputs[id].setAttribute("aria-invalid", "true");
        else nameInputs[id].removeAttribute("aria-invalid");
      }
      clash.textContent = shared.length ? `Two speakers are both called "${names[shared[0]]}": ` +
        "RTTM and the list would merge them. Give each its own name." : "";
    }

    function layout() {
      const width = Math.max(duration * pxPerSecond, scroller.clientWidth || 600);
      canvas.style.width = `${width}px`;
      turnButtons.forEach((b, i) => {
        if (!b) return;
        const s = segments[i];
        b.style.left = `${s.start * pxPerSecond}px`;
        b.style.width = `${Math.max((s.end - s.start) * pxPerSecond, 2)}px`;
      });
      // Ticks at a round step that leaves ~90 px between labels.
      const steps = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
      const step = steps.find((st) => st * pxPerSecond >= 90) || 7200;
      ruler.replaceChildren();
      for (let t = 0; t <= duration; t += step) {
        ruler.append(el("span", { class: "tl-tick", style: { left: `${t * pxPerSecond}px` }, text: clock(t).replace(/\.0$/, "") }));
      }
      zoomLabel.textContent = `${Math.round(scroller.clientWidth / pxPerSecond)} s visible`;
      moveCursor();
    }

    function fit() {
      pxPerSecond = Math.min(MAX_PX_PER_SECOND, Math.max(MIN_PX_PER_SECOND, (scroller.clientWidth || 600) / duration));
      layout();
    }

    function zoom(factor) {
      // Keep the cursor where it is on screen when it is in view; otherwise keep the middle of the view.
      const t = audio.currentTime || 0;
      const offset = t * pxPerSecond - scroller.scrollLeft;
      const anchorTime = offset >= 0 && offset <= scroller.clientWidth ? t
        : (scroller.scrollLeft + scroller.clientWidth / 2) / pxPerSecond;
      const anchorOffset = offset >= 0 && offset <= scroller.clientWidth ? offset : scroller.clientWidth / 2;
      pxPerSecond = Math.min(MAX_PX_PER_SECOND, Math.max(MIN_PX_PER_SECOND, pxPerSecond * factor));
      layout();
      scroller.scrollLeft = anchorTime * pxPerSecond - anchorOffset;
    }

    function moveCursor() {
      const t = audio.currentTime || 0;
      cursor.style.left = `${t * pxPerSecond}px`;
      time.textContent = `${clock(t)} / ${clock(duration)}`;
      const x = t * pxPerSecond;
      if (!audio.paused && (x < scroller.scrollLeft || x > scroller.scrollLeft + scroller.clientWidth - 20)) {
        scroller.scrollLeft = x - scroller.clientWidth * 0.1;  // follow the cursor while playing
      }
      if (stopAt !== null && t >= stopAt) {
        audio.pause();
        stopAt = null;
      }
    }

    function tick() {
      moveCursor();
      if (!audio.paused) requestAnimationFrame(tick);
    }

    function markPlaying(index) {
      if (playingTurn !== null && turnButtons[playingTurn]) turnButtons[playingTurn].classList.remove("tl-playing");
      playingTurn = index;
      if (index !== null && turnButtons[index]) turnButtons[index].classList.add("tl-playing");
    }

    function playTurn(index) {
      const s = segments[index];
      markPlaying(index);
      audio.currentTime = s.start;
      stopAt = s.end;
      const played = audio.play();
      if (played && played.catch) played.catch(() => {});
      moveCursor();
    }

    function togglePlay() {
      stopAt = null;
      if (audio.paused) {
        const played = audio.play();
        if (played && played.catch) played.catch(() => {});
      } else audio.pause();
    }

    function seekTurn(direction) {
      const t = audio.currentTime || 0;
      const index = direction > 0 ? segments.findIndex((s) => s.start > t + 0.05)
        : segments.map((s) => s.start < t - 0.5).lastIndexOf(true);
      if (index >= 0) {
        playTurn(index);
        turnButtons[index].focus({ preventScroll: false });
      }
    }

    audio.addEventListener("play", () => requestAnimationFrame(tick));
    audio.addEventListener("seeked", moveCursor);
    audio.addEventListener("timeupdate", moveCursor);
    audio.addEventListener("pause", () => { moveCursor(); });
    audio.addEventListener("loadedmetadata", () => {
      if (audio.duration && isFinite(audio.duration) && audio.duration > duration + 0.5) {
        duration = audio.duration;
        fit();
      }
    });
    scroller.addEventListener("click", (event) => {
      if (event.target.closest(".tl-turn")) return;
      const box = canvas.getBoundingClientRect();
      audio.currentTime = Math.max(0, (event.clientX - box.left) / pxPerSecond);
      stopAt = null;
      moveCursor();
    });
    scroller.addEventListener("wheel", (event) => {
      if (!event.ctrlKey) return;  // plain wheel scrolls; ctrl+wheel (and pinch) zooms
      event.preventDefault();
      zoom(event.deltaY < 0 ? 1.25 : 0.8);
    }, { passive: false });
    root.addEventListener("keydown", (event) => {
      if (event.target.tagName === "INPUT" || event.altKey || event.ctrlKey || event.metaKey) return;
      const keys = {
        " ": () => togglePlay(),
        ArrowRight: () => { audio.currentTime = Math.min(duration, (audio.currentTime || 0) + 5); },
        ArrowLeft: () => { audio.currentTime = Math.max(0, (audio.currentTime || 0) - 5); },
        n: () => seekTurn(1), N: () => seekTurn(1), p: () => seekTurn(-1), P: () => seekTurn(-1),
        "+": () => zoom(2), "=": () => zoom(2), "-": () => zoom(0.5),
      };
      if (event.key === " " && event.target.tagName === "BUTTON") return;  // Space on a button presses it
      if (keys[event.key]) {
        event.preventDefault();
        keys[event.key]();
        moveCursor();
      }
    });
    new ResizeObserver(() => { if (!pxPerSecond) fit(); else layout(); }).observe(scroller);
    relabel();
    fit();

    return {
      audio, names, speakers, segments,
      setAudio(src) { unplayable.hidden = true; audio.src = src; },
      export(kind) { return exporters[kind](diarized, names, fileId); },
      playTurn, zoom, fit,
    };
  }

  global.DiarizerTimeline = { render, exporters, clock, PALETTE, CONFIDENCE_BANDS };
})(window);
