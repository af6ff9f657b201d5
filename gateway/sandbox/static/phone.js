// The browser phone: this page is the WhatsApp user calling the business.
// Its WebRTC offer goes to the sandbox, which delivers it to the gateway as a
// signed connect webhook and returns the gateway's answer. Keys go in-band as
// RFC 4733 events (RTCDTMFSender). No build step, no dependencies.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const JSON_HEADERS = { "Content-Type": "application/json" };
  // The analyser window counts as "the bot is audible" above this RMS (about -34 dBFS).
  const LOUD_RMS = 0.02;
  const client = (crypto.randomUUID && crypto.randomUUID()) || String(Math.random()).slice(2);

  const phone = {
    pc: null,
    stream: null,
    dtmf: null,
    callId: null,
    bot: null,
    state: "ENDED", // calling, OFFERED, PRE_ACCEPTED, ACCEPTED, ENDED (also: no call yet)
    endReason: null,
    hangupPending: false,
    acceptedAt: null,
    keys: "",
    history: [],
    callStates: {}, // call id -> latest state from the event stream (may beat the POST)
    audio: null, // {ctx, analyser, buffer}
    metrics: { windows: 0, loudWindows: 0, maxRms: 0 },
    stats: null,
    timers: [],
  };

  // --- timeline ------------------------------------------------------------------------

  const events = $("events");

  function addRow(ms, text) {
    const li = document.createElement("li");
    const kind = text.startsWith("gateway:") ? "gateway"
      : text.startsWith("bot ") ? "bot"
      : text.startsWith("graph:") ? "graph"
      : text.startsWith("webhook:") ? "webhook"
      : text.startsWith("page:") ? "page" : "sandbox";
    li.className = kind;
    const t = document.createElement("span");
    t.className = "t";
    t.textContent = ms === null ? "" : (ms / 1000).toFixed(3) + " s";
    const x = document.createElement("span");
    x.className = "x";
    x.textContent = text;
    li.append(t, x);
    const atBottom = events.scrollTop + events.clientHeight >= events.scrollHeight - 4;
    events.append(li);
    while (events.childElementCount > 600) events.firstElementChild.remove();
    if (atBottom) events.scrollTop = events.scrollHeight;
  }

  function note(text) {
    addRow(null, "page: " + text);
  }

  function connectEvents() {
    const source = new EventSource("/phone/events?client=" + encodeURIComponent(client));
    source.onmessage = (message) => {
      const event = JSON.parse(message.data);
      if (event.type === "hello") {
        events.replaceChildren();
        for (const row of event.timeline) addRow(row.t, row.text);
      } else if (event.type === "timeline") {
        addRow(event.t, event.text);
      } else if (event.type === "call") {
        phone.callStates[event.call_id] = event;
        if (event.call_id === phone.callId) applyState(event.state, event.reason);
      }
    };
  }

  // --- the call --------------------------------------------------------------------------

  function setStatus(text, kind) {
    const status = $("status");
    status.textContent = text;
    status.dataset.state = kind || "idle";
  }

  function setInCall(inCall) {
    const button = $("call");
    button.textContent = inCall ? "Hang up" : "Call";
    button.classList.toggle("call", !inCall);
    button.classList.toggle("hangup", inCall);
    $("bot").disabled = inCall;
    $("mute").disabled = !inCall;
  }

  function gathered(pc) {
    // WhatsApp does not trickle: the offer goes out with every candidate in it.
    return new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      const done = () => pc.iceGatheringState === "complete" && resolve();
      pc.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, 3000); // loopback gathers at once; never wait long
    });
  }

  function attachRemote(stream) {
    const audio = $("remote");
    audio.srcObject = stream;
    audio.play().catch(() => {});
    // An analyser on the bot's audio drives the level meter (and tells tests it was heard).
    const ctx = phone.audio ? phone.audio.ctx : new AudioContext();
    ctx.resume().catch(() => {});
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 2048;
    ctx.createMediaStreamSource(stream).connect(analyser);
    phone.audio = { ctx, analyser, buffer: new Float32Array(analyser.fftSize) };
  }

  function measure() {
    if (!phone.audio) return;
    const { analyser, buffer } = phone.audio;
    analyser.getFloatTimeDomainData(buffer);
    let sum = 0;
    for (const v of buffer) sum += v * v;
    const rms = Math.sqrt(sum / buffer.length);
    const m = phone.metrics;
    m.windows += 1;
    if (rms > LOUD_RMS) m.loudWindows += 1;
    m.maxRms = Math.max(m.maxRms, rms);
    const db = rms > 0 ? 20 * Math.log10(rms) : -100;
    $("level").style.width = Math.max(0, Math.min(100, ((db + 60) / 60) * 100)) + "%";
  }

  async function collectStats() {
    const pc = phone.pc;
    if (!pc) return;
    let report;
    try {
      report = await pc.getStats();
    } catch (err) {
      return;
    }
    const s = { inbound: null, outbound: null, pair: null, local: null, remote: null, codec: null };
    let pairId = null;
    report.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "audio") s.inbound = r;
      if (r.type === "outbound-rtp" && r.kind === "audio") s.outbound = r;
      if (r.type === "transport" && r.selectedCandidatePairId) pairId = r.selectedCandidatePairId;
    });
    if (pairId) {
      s.pair = report.get(pairId) || null;
      if (s.pair) {
        s.local = report.get(s.pair.localCandidateId) || null;
        s.remote = report.get(s.pair.remoteCandidateId) || null;
      }
    }
    if (s.inbound && s.inbound.codecId) s.codec = report.get(s.inbound.codecId) || null;
    const cand = (c) => c && {
      address: c.address, port: c.port, type: c.candidateType, protocol: c.protocol,
    };
    phone.stats = {
      bytesReceived: s.inbound ? s.inbound.bytesReceived : 0,
      packetsReceived: s.inbound ? s.inbound.packetsReceived : 0,
      totalAudioEnergy: s.inbound ? s.inbound.totalAudioEnergy || 0 : 0,
      bytesSent: s.outbound ? s.outbound.bytesSent : 0,
      packetsSent: s.outbound ? s.outbound.packetsSent : 0,
      codec: s.codec ? `${s.codec.mimeType}/${s.codec.clockRate}` : null,
      payloadType: s.codec ? s.codec.payloadType : null,
      local: cand(s.local),
      remote: cand(s.remote),
      pairState: s.pair ? s.pair.state : null,
    };
    const st = phone.stats;
    if (st.local && st.remote) {
      // The selected ICE pair as this browser sees it, and the traffic so far.
      $("media").textContent =
        `${st.local.address}:${st.local.port} ⇄ ${st.remote.address}:${st.remote.port}\n` +
        `${st.local.type}/${st.remote.type} · ${(st.codec || "?").replace("audio/", "")}` +
        ` · ↓ ${(st.bytesReceived / 1000).toFixed(1)} kB ↑ ${(st.bytesSent / 1000).toFixed(1)} kB`;
    }
  }

  function tick() {
    if (phone.acceptedAt === null) return;
    const seconds = Math.floor((performance.now() - phone.acceptedAt) / 1000);
    const mm = String(Math.floor(seconds / 60)).padStart(2, "0");
    const ss = String(seconds % 60).padStart(2, "0");
    $("timer").textContent = `${mm}:${ss}`;
  }

  // Events and the POST's answer can arrive in either order; states only move forward.
  const ORDER = ["calling", "OFFERED", "PRE_ACCEPTED", "ACCEPTED", "ENDED"];

  function applyState(state, reason) {
    if (ORDER.indexOf(state) <= ORDER.indexOf(phone.state)) return;
    if (state === "ENDED") {
      teardown(reason || "call ended");
      return;
    }
    phone.state = state;
    phone.history.push(state);
    if (state === "OFFERED") setStatus(`Calling ${phone.bot}…`, "calling");
    else if (state === "PRE_ACCEPTED") setStatus("Connecting…", "calling");
    else if (state === "ACCEPTED") {
      setStatus(`In a call with ${phone.bot}`, "active");
      phone.acceptedAt = performance.now();
      tick();
    }
  }

  async function call() {
    if (phone.state !== "ENDED") return; // a call is already being made
    phone.bot = $("bot").value;
    phone.callId = null;
    phone.state = "calling";
    phone.endReason = null;
    phone.hangupPending = false;
    phone.acceptedAt = null;
    phone.keys = "";
    phone.history = [];
    phone.metrics = { windows: 0, loudWindows: 0, maxRms: 0 };
    phone.stats = null;
    $("keys").textContent = "";
    $("timer").textContent = "00:00";
    setInCall(true);
    setStatus(`Calling ${phone.bot}…`, "calling");
    try {
      phone.stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: false });
      const pc = new RTCPeerConnection({
        iceServers: [], bundlePolicy: "max-bundle", rtcpMuxPolicy: "require",
      });
      phone.pc = pc;
      const track = phone.stream.getAudioTracks()[0];
      const transceiver = pc.addTransceiver(track, { direction: "sendrecv", streams: [phone.stream] });
      phone.dtmf = transceiver.sender.dtmf;
      pc.ontrack = (e) => attachRemote(e.streams[0] || new MediaStream([e.track]));
      pc.onconnectionstatechange = () => {
        note(`media ${pc.connectionState}`);
        if (pc.connectionState === "failed") hangUp("media failed");
      };
      phone.timers.push(setInterval(measure, 50), setInterval(collectStats, 500), setInterval(tick, 250));
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc);
      if (phone.hangupPending) return teardown("you hung up");
      const res = await fetch("/phone/calls", {
        method: "POST",
        headers: JSON_HEADERS,
        body: JSON.stringify({ sdp: pc.localDescription.sdp, bot: phone.bot, client }),
      });
      const body = await res.json();
      if (!res.ok) throw new Error(body.error || res.statusText);
      if (phone.pc !== pc) return;
      phone.callId = body.call_id;
      await pc.setRemoteDescription({ type: "answer", sdp: body.sdp });
      const known = phone.callStates[body.call_id];
      if (known && known.state === "ENDED") return applyState("ENDED", known.reason);
      applyState(body.state);
      if (known) applyState(known.state, known.reason);
      if (phone.hangupPending) hangUp();
    } catch (err) {
      note(`call failed: ${err.message || err}`);
      await teardown(`failed: ${err.message || err}`, "error");
    }
  }

  async function hangUp(reason) {
    if (phone.state === "ENDED") return;
    const id = phone.callId;
    if (!id) {
      phone.hangupPending = true; // the sandbox has not named the call yet
      return;
    }
    // Tell the sandbox first: on pagehide there is no time for anything else.
    const sent = fetch(`/phone/calls/${encodeURIComponent(id)}/hangup`, {
      method: "POST", headers: JSON_HEADERS, body: "{}", keepalive: true,
    }).catch(() => {});
    await teardown(reason || "you hung up");
    await sent;
  }

  async function teardown(reason, kind) {
    if (phone.state === "ENDED") return;
    phone.state = "ENDED";
    phone.history.push("ENDED");
    phone.endReason = reason;
    await collectStats(); // the final figures, before the connection closes
    measure();
    for (const t of phone.timers) clearInterval(t);
    phone.timers = [];
    if (phone.pc) phone.pc.close();
    phone.pc = null;
    phone.dtmf = null;
    if (phone.stream) for (const t of phone.stream.getTracks()) t.stop();
    phone.stream = null;
    $("level").style.width = "0";
    $("mute").textContent = "Mute";
    $("mute").classList.remove("muted");
    setInCall(false);
    setStatus(`Call ended: ${reason}`, kind || "idle");
  }

  function press(key) {
    const dtmf = phone.dtmf;
    if (!dtmf || phone.state !== "ACCEPTED" || !dtmf.canInsertDTMF) return false;
    // insertDTMF replaces the queue: keep keys pressed quickly from being lost.
    dtmf.insertDTMF(dtmf.toneBuffer + key, 160, 70);
    phone.keys += key;
    $("keys").textContent = phone.keys;
    const button = document.querySelector(`#keypad button[data-key="${CSS.escape(key)}"]`);
    if (button) {
      button.classList.add("pressed");
      setTimeout(() => button.classList.remove("pressed"), 160);
    }
    return true;
  }

  function toggleMute() {
    const track = phone.stream && phone.stream.getAudioTracks()[0];
    if (!track) return;
    track.enabled = !track.enabled; // a muted track still sends (silent) frames and keys
    $("mute").textContent = track.enabled ? "Mute" : "Unmute";
    $("mute").classList.toggle("muted", !track.enabled);
  }

  // --- wiring ----------------------------------------------------------------------------

  async function loadBots() {
    const res = await fetch("/phone/bots");
    const body = await res.json();
    const select = $("bot");
    select.replaceChildren();
    for (const name of body.bots) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      option.selected = name === body.default;
      select.append(option);
    }
  }

  $("call").addEventListener("click", () => (phone.state === "ENDED" ? call() : hangUp()));
  $("mute").addEventListener("click", toggleMute);
  for (const button of document.querySelectorAll("#keypad button")) {
    button.addEventListener("click", () => press(button.dataset.key));
  }
  document.addEventListener("keydown", (e) => {
    if (/^[0-9*#]$/.test(e.key) && !e.target.closest("select")) press(e.key);
  });
  // Closing the tab hangs up, as closing WhatsApp would.
  window.addEventListener("pagehide", () => { if (phone.callId) hangUp("page closed"); });

  window.phone = {
    call,
    hangUp,
    press,
    snapshot: () => JSON.parse(JSON.stringify({
      state: phone.state,
      callId: phone.callId,
      bot: phone.bot,
      endReason: phone.endReason,
      keys: phone.keys,
      history: phone.history,
      metrics: phone.metrics,
      stats: phone.stats,
    })),
  };

  connectEvents();
  loadBots().catch((err) => note(`cannot list bots: ${err.message}`));
})();
