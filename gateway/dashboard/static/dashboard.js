// The operator page: polls /dashboard/api/state every second and renders it.
// Every value is put in with textContent: call ids, names and reasons come from outside.
"use strict";

const $ = (id) => document.getElementById(id);
let selected = null;
let previous = null; // last summary, for CPU per call-second between polls
let lastRecording = null;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function clock(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const s = Math.max(0, Math.floor(seconds));
  const m = Math.floor(s / 60);
  return `${m}:${String(s % 60).padStart(2, "0")}`;
}

function hhmmss(epoch) {
  if (!epoch) return "";
  return new Date(epoch * 1000).toISOString().slice(11, 19);
}

function shortId(id) {
  return id.length > 18 ? `${id.slice(0, 10)}…${id.slice(-6)}` : id;
}

function tile(key, value, bad) {
  const node = el("div", null, bad ? "tile bad" : "tile");
  node.append(el("div", value, "v"), el("div", key, "k"));
  return node;
}

function renderSummary(s) {
  let cpu = "-";
  if (previous && s.call_seconds > previous.call_seconds) {
    const ms = (1000 * (s.cpu_seconds - previous.cpu_seconds)) / (s.call_seconds - previous.call_seconds);
    cpu = `${ms.toFixed(1)} ms`;
  }
  previous = s;
  $("tiles").replaceChildren(
    tile("active calls", `${s.active} / ${s.capacity}`, s.active >= s.capacity),
    tile("calls ended", s.ended),
    tile("rejected", s.rejected, s.rejected > 0),
    tile("response p50", s.response_p50_ms === null ? "-" : `${Math.round(s.response_p50_ms)} ms`),
    tile("inbound loss", `${s.loss_percent.toFixed(2)} %`, s.loss_percent >= 1),
    tile("loop lag p99", `${s.loop_lag_p99_ms.toFixed(1)} ms`, s.loop_lag_p99_ms >= 20),
    tile("CPU per call-s", cpu),
    tile("memory", `${Math.round(s.rss_bytes / 2 ** 20)} MB`),
  );
  $("uptime").textContent = `up ${clock(s.uptime_seconds)}${s.recordings ? " · recording calls" : ""}`;
}

function renderLive(calls) {
  $("live-count").textContent = calls.length ? `${calls.length} up` : "";
  $("live-empty").hidden = calls.length > 0;
  $("live-rows").replaceChildren(
    ...calls.map((c) => {
      const row = el("tr");
      row.dataset.callId = c.call_id;
      const state = el("td", c.state, "state");
      state.dataset.state = c.state;
      row.append(
        el("td", shortId(c.call_id), "id"),
        el("td", c.name ? `${c.name} (${c.peer})` : c.peer),
        state,
        el("td", clock(c.duration)),
        el("td", c.bot),
        el("td", c.packets_in, "n"),
        el("td", c.packets_out, "n"),
        el("td", `${c.loss_percent.toFixed(1)} %`, "n"),
        el("td", `${c.jitter_ms.toFixed(1)} ms`, "n"),
      );
      return row;
    }),
  );
}

function renderRecent(calls) {
  $("recent-empty").hidden = calls.length > 0;
  $("recent-rows").replaceChildren(
    ...calls.map((c) => {
      const row = el("tr", null, c.call_id === selected ? "selected" : "");
      row.dataset.callId = c.call_id;
      row.append(
        el("td", shortId(c.call_id), "id"),
        el("td", c.name || c.peer),
        el("td", hhmmss(c.created_at)),
        el("td", clock(c.duration)),
        el("td", c.end_reason || "-", "wrap"),
        el("td", c.loss_percent === undefined ? "-" : `${c.loss_percent.toFixed(1)} %`, "n"),
        el("td", c.recording ? "● rec" : "", "rec"),
      );
      row.addEventListener("click", () => {
        selected = c.call_id;
        renderDetails(c);
        for (const r of $("recent-rows").children) r.classList.toggle("selected", r === row);
      });
      return row;
    }),
  );
  const current = calls.find((c) => c.call_id === selected);
  if (current) renderDetails(current);
}

function renderDetails(c) {
  $("details").hidden = false;
  $("details").dataset.callId = c.call_id;
  $("details-title").textContent = `Call ${c.call_id}`;
  const billed = c.billed_seconds === null ? "" : ` · WhatsApp billed ${c.billed_seconds} s`;
  $("details-sub").textContent = `${c.direction} · ${c.packets_in ?? 0} packets in, ${c.packets_out ?? 0} out${billed}`;
  $("details-timeline").replaceChildren(
    ...c.timeline.map((e) => {
      const li = el("li");
      li.append(el("span", e.at ? hhmmss(e.at) : "", "t"), el("span", e.what, "x"));
      return li;
    }),
  );
  const audio = $("details-audio");
  $("details-no-recording").hidden = Boolean(c.recording);
  audio.hidden = !c.recording;
  if (c.recording && c.recording !== lastRecording) {
    lastRecording = c.recording;
    audio.src = c.recording;
  }
  $("details-no-transcript").hidden = c.transcript.length > 0;
  $("details-transcript").replaceChildren(
    ...c.transcript.map((turn) => {
      const li = el("li", null, turn.role);
      const who = { user: "caller", assistant: "bot", tool: "tool", event: "·" }[turn.role] || turn.role;
      li.append(el("span", who, "who"), el("span", turn.text));
      if (turn.interrupted) li.append(el("span", " (interrupted)", "muted"));
      return li;
    }),
  );
}

async function poll() {
  try {
    const response = await fetch("/dashboard/api/state", { cache: "no-store" });
    if (response.ok) {
      const state = await response.json();
      renderSummary(state.summary);
      renderLive(state.active);
      renderRecent(state.recent);
      document.body.dataset.updated = String(state.now);
    }
  } catch (err) {
    console.error("dashboard poll failed", err);
  }
  setTimeout(poll, 1000);
}

poll();
