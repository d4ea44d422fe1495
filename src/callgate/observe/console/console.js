// callgate console: plain JavaScript, no build step. Reads the REST API and the live update
// stream with the API key from sessionStorage (never in a URL).
"use strict";

const KEY = "callgate-api-key";
const STAGES = ["turn_detection", "stt", "llm_first_token", "tts_first_audio"];
const $ = (id) => document.getElementById(id);
const state = { live: new Map(), view: null, callId: null, record: null, partial: new Map(),
  historyAfter: null, stream: null, audioUrl: null, audioFor: null };

function key() { return sessionStorage.getItem(KEY); }

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (key()) headers.Authorization = `Bearer ${key()}`;
  const response = await fetch(path, { ...options, headers });
  if (response.status === 401) { logout("The API key was not accepted."); throw new Error("unauthorized"); }
  return response;
}

async function apiJson(path, options) {
  const response = await api(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error ? body.error.message : `HTTP ${response.status}`);
  return body;
}

// --- login ------------------------------------------------------------------------------
async function login(event) {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value);
  $("key").value = "";
  try {
    await apiJson("/v1/realtime/calls?limit=1");
  } catch (err) {
    $("login-error").textContent = err.message === "unauthorized"
      ? "The API key was not accepted." : err.message;
    return;
  }
  start();
}

function logout(message) {
  sessionStorage.removeItem(KEY);
  if (state.stream) state.stream.abort();
  state.stream = null;
  show("login");
  $("login-error").textContent = message || "";
}

// --- views ------------------------------------------------------------------------------
function show(view) {
  for (const id of ["login", "live", "history", "call"]) $(id).hidden = id !== view;
  $("nav").hidden = $("logout").hidden = view === "login";
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.view === view);
  }
  state.view = view;
}

function route() {
  if (key() === null) { show("login"); return; }
  const hash = location.hash.replace(/^#\/?/, "");
  if (hash.startsWith("call/")) openCall(decodeURIComponent(hash.slice(5)));
  else if (hash === "history") { show("history"); loadHistory(true); }
  else { show("live"); renderLive(); loadCharts(); }
}

function start() {
  connect();
  route();
}

// --- live updates -----------------------------------------------------------------------
async function connect() {
  if (state.stream) return;
  const controller = new AbortController();
  state.stream = controller;
  let delay = 500;
  while (state.stream === controller) {
    try {
      const response = await api("/console/events", { signal: controller.signal });
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      $("link").classList.add("up");
      delay = 500;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let newline;
        while ((newline = buffer.indexOf("\n")) >= 0) {
          const line = buffer.slice(0, newline);
          buffer = buffer.slice(newline + 1);
          if (line) handle(JSON.parse(line));
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    $("link").classList.remove("up");
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 10000);
  }
}

function handle(update) {
  const data = update.data;
  switch (update.type) {
    case "snapshot":
      state.live = new Map(data.calls.map((c) => [c.id, c]));
      break;
    case "call": {
      const known = state.live.get(data.id);
      const merged = { ...(known || {}), ...data };
      if (data.ended_at) {
        state.live.delete(data.id);
        if (state.view === "live") setTimeout(loadCharts, 1000);  // once the record is written
      } else state.live.set(data.id, merged);
      if (state.callId === data.id && state.record) {
        state.record = { ...state.record, ...data };
        renderCall();
        if (data.ended_at) setTimeout(() => refreshCall(data.id), 300);
      }
      break;
    }
    case "transcript":
      if (state.callId === data.call_id && state.record) {
        state.partial.delete(data.item_id);
        state.record.transcript.push(data);
        renderTranscript();
      }
      break;
    case "partial":
      if (state.callId === data.call_id) { state.partial.set(data.item_id, data.text); renderTranscript(); }
      break;
    case "turn":
      if (state.callId === data.call_id && state.record) {
        state.record.turns.push(data);
        renderWaterfall();
      }
      break;
    case "media": {
      const call = state.live.get(data.call_id);
      if (call) call.quality = data.quality;
      if (state.callId === data.call_id && state.record) {
        state.record.quality = data.quality;
        if (data.levels) { $("level-caller").value = data.levels.caller * 4; $("level-agent").value = data.levels.agent * 4; }
        renderFacts();
      }
      break;
    }
    default:
      break;
  }
  if (state.view === "live") renderLive();
}

// --- live calls -------------------------------------------------------------------------
function renderLive() {
  const rows = [...state.live.values()].sort((a, b) => b.started_at - a.started_at);
  $("live-count").textContent = rows.length;
  $("live-empty").hidden = rows.length > 0;
  $("live-calls").replaceChildren(...rows.map((c) => row(c, [
    c.from, c.direction, c.state, duration(c), c.model || "–", c.codec || "–", mos(c)])));
}

function row(call, cells) {
  const tr = document.createElement("tr");
  tr.dataset.callId = call.id;
  for (const cell of cells) {
    const td = document.createElement("td");
    if (cell instanceof Node) td.append(cell); else td.textContent = cell;
    tr.append(td);
  }
  tr.addEventListener("click", () => { location.hash = `#/call/${encodeURIComponent(call.id)}`; });
  return tr;
}

function duration(call) {
  const from = call.answered_at || call.started_at;
  const to = call.ended_at || Date.now() / 1000;
  const s = Math.max(0, Math.round(to - from));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function mos(call) {
  const value = call.quality && call.quality.mos;
  const span = document.createElement("span");
  span.textContent = value == null ? "–" : value.toFixed(2);
  if (value != null) span.className = value >= 4 ? "mos-good" : value < 3.5 ? "mos-bad" : "";
  return span;
}

setInterval(() => {
  if (state.view === "live") renderLive();
  if (state.view === "call" && state.record && !state.record.ended_at) renderFacts();
}, 1000);

// --- charts over the last hour ----------------------------------------------------------
async function loadCharts() {
  const since = Date.now() / 1000 - 3600;
  let calls = [];
  try {
    calls = (await apiJson(`/v1/realtime/calls?limit=100&since=${since}`)).data;
  } catch (err) { return; }
  const buckets = Array.from({ length: 12 }, () => ({ calls: 0, ok: 0, v2v: [] }));
  for (const c of calls) {
    const i = Math.min(11, Math.floor((c.started_at - since) / 300));
    if (i < 0) continue;
    buckets[i].calls += 1;
    if (c.sip_status === 200) buckets[i].ok += 1;
  }
  draw($("chart-calls"), buckets.map((b) => b.calls));
  draw($("chart-setup"), buckets.map((b) => (b.calls ? (100 * b.ok) / b.calls : 0)), 100);
  const latency = await Promise.all(calls.slice(0, 20).map((c) =>
    apiJson(`/v1/realtime/calls/${encodeURIComponent(c.id)}/transcript`).catch(() => null)));
  latency.forEach((t, n) => {
    if (!t) return;
    const i = Math.min(11, Math.floor((calls[n].started_at - since) / 300));
    for (const turn of t.turns) if (turn.stages && turn.stages.voice_to_voice != null) buckets[i].v2v.push(turn.stages.voice_to_voice);
  });
  draw($("chart-latency"), buckets.map((b) => (b.v2v.length ? b.v2v.reduce((x, y) => x + y) / b.v2v.length : 0)));
}

function draw(canvas, values, max) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth * ratio;
  const height = canvas.clientHeight * ratio;
  canvas.width = width;
  canvas.height = height;
  const ctx = canvas.getContext("2d");
  const top = max || Math.max(1, ...values);
  const step = width / values.length;
  ctx.fillStyle = "#2458d6";
  values.forEach((v, i) => {
    const h = (v / top) * (height - 12 * ratio);
    ctx.fillRect(i * step + 2 * ratio, height - h, step - 4 * ratio, h);
  });
  ctx.fillStyle = "#667085";
  ctx.font = `${10 * ratio}px system-ui`;
  ctx.fillText(String(Math.round(Math.max(...values))), 2 * ratio, 10 * ratio);
}

// --- history ----------------------------------------------------------------------------
async function loadHistory(fresh) {
  if (fresh) { state.historyAfter = null; $("history-calls").replaceChildren(); }
  const params = new URLSearchParams({ limit: "25" });
  const search = $("history-search").value.trim();
  if (search) params.set("search", search);
  if ($("history-direction").value) params.set("direction", $("history-direction").value);
  if (state.historyAfter) params.set("after", state.historyAfter);
  let page;
  try { page = await apiJson(`/v1/realtime/calls?${params}`); } catch (err) { return; }
  $("history-calls").append(...page.data.map((c) => row(c, [
    new Date(c.started_at * 1000).toLocaleString(), c.from, c.direction, c.state,
    c.answered_at ? duration(c) : "–", mos(c), c.recording ? "●" : ""])));
  state.historyAfter = page.last_id;
  $("history-more").hidden = !page.has_more;
}

// --- one call ---------------------------------------------------------------------------
async function openCall(callId) {
  show("call");
  if (state.callId !== callId) {
    $("player").removeAttribute("src");
    state.audioFor = null;
  }
  state.callId = callId;
  state.partial.clear();
  $("call-error").textContent = "";
  await refreshCall(callId);
}

async function refreshCall(callId) {
  try {
    const [record, transcript] = await Promise.all([
      apiJson(`/v1/realtime/calls/${encodeURIComponent(callId)}`),
      apiJson(`/v1/realtime/calls/${encodeURIComponent(callId)}/transcript`)]);
    if (state.callId !== callId) return;
    state.record = { ...record, transcript: transcript.data, turns: transcript.turns };
  } catch (err) {
    $("call-error").textContent = err.message;
    return;
  }
  renderCall();
  renderTranscript();
  renderWaterfall();
  loadRecording();
}

function renderCall() {
  const c = state.record;
  $("call-title").textContent = `${c.from} → ${c.to}`;
  const live = !c.ended_at;
  $("hangup").disabled = !live;
  $("transfer-form").querySelector("button").disabled = !(live && c.answered_at);
  $("meters").hidden = !live;
  renderFacts();
}

function renderFacts() {
  const c = state.record;
  const q = c.quality || {};
  const facts = [["State", c.state], ["Direction", c.direction], ["Duration", c.answered_at ? duration(c) : "–"],
    ["Model", c.model || "–"], ["Codec", c.codec || "–"], ["MOS", q.mos == null ? "–" : q.mos.toFixed(2)],
    ["Jitter", q.jitter_ms == null ? "–" : `${q.jitter_ms.toFixed(1)} ms`],
    ["Packets in/out/lost", `${q.packets_in ?? "–"} / ${q.packets_out ?? "–"} / ${q.lost ?? "–"}`],
    ["SIP status", c.sip_status ?? "–"], ["End", c.end_reason || "–"], ["Call id", c.id]];
  $("call-facts").replaceChildren(...facts.map(([name, value]) => {
    const div = document.createElement("div");
    const dt = document.createElement("dt");
    const dd = document.createElement("dd");
    dt.textContent = name;
    dd.textContent = value;
    if (name === "State") dd.dataset.state = value;
    div.append(dt, dd);
    return div;
  }));
}

function renderTranscript() {
  const items = state.record.transcript.map((line) => {
    const li = document.createElement("li");
    li.className = line.role;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = `${line.role.replace("_", " ")}${line.name ? ` ${line.name}` : ""} · ${new Date(line.at * 1000).toLocaleTimeString()}`;
    li.append(who, line.text);
    return li;
  });
  for (const text of state.partial.values()) {
    const li = document.createElement("li");
    li.className = "agent partial";
    li.textContent = text;
    items.push(li);
  }
  $("transcript").replaceChildren(...items);
  $("transcript").scrollTop = $("transcript").scrollHeight;
}

function renderWaterfall() {
  const turns = state.record.turns;
  const longest = Math.max(1, ...turns.map((t) => t.points.first_audio_out || 0));
  $("waterfall").replaceChildren(...turns.map((turn, n) => {
    const div = document.createElement("div");
    div.className = "turn";
    const total = turn.stages.voice_to_voice;
    const label = document.createElement("div");
    label.className = "turn-label";
    label.textContent = `Turn ${n + 1}: ${total != null ? `${total} ms voice to voice` : turn.status}`;
    const bar = document.createElement("div");
    bar.className = "bar";
    let at = 0;
    for (const stage of STAGES) {
      const ms = turn.stages[stage];
      if (ms == null) continue;
      const start = stage === "llm_first_token" ? (turn.points.llm_first_token - ms) : at;
      const seg = document.createElement("span");
      seg.className = `seg stage-${stage}`;
      seg.dataset.stage = stage;
      seg.title = `${stage.replaceAll("_", " ")}: ${ms} ms`;
      seg.style.left = `${(100 * start) / longest}%`;
      seg.style.width = `${Math.max(0.5, (100 * ms) / longest)}%`;
      bar.append(seg);
      at = start + ms;
    }
    div.append(label, bar);
    return div;
  }));
}

async function loadRecording() {
  const c = state.record;
  if (state.audioFor === c.id) return;  // already loaded: reloading would stop playback
  $("recording").hidden = true;
  if (!c.recording || !c.ended_at) return;
  state.audioFor = c.id;
  // The recording is fetched with the key and played from memory: the key never goes into
  // a URL the audio element would request.
  const response = await api(`/v1/realtime/calls/${encodeURIComponent(c.id)}/content`);
  const blob = response.ok ? await response.blob() : null;
  if (state.audioFor !== c.id || state.callId !== c.id) return;  // another call was opened
  if (!blob) { state.audioFor = null; return; }
  if (state.audioUrl) URL.revokeObjectURL(state.audioUrl);
  state.audioUrl = URL.createObjectURL(blob);
  $("player").src = state.audioUrl;
  $("recording").hidden = false;
}

async function hangup() {
  try {
    await apiJson(`/v1/realtime/calls/${encodeURIComponent(state.callId)}/hangup`, { method: "POST" });
  } catch (err) { $("call-error").textContent = err.message; }
}

async function transfer(event) {
  event.preventDefault();
  const target = $("transfer-target").value.trim();
  if (!target) return;
  try {
    await apiJson(`/v1/realtime/calls/${encodeURIComponent(state.callId)}/refer`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ target_uri: target }) });
  } catch (err) { $("call-error").textContent = err.message; }
}

window.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", login);
  $("logout").addEventListener("click", () => logout());
  $("history-form").addEventListener("submit", (e) => { e.preventDefault(); loadHistory(true); });
  $("history-more").addEventListener("click", () => loadHistory(false));
  $("hangup").addEventListener("click", hangup);
  $("transfer-form").addEventListener("submit", transfer);
  window.addEventListener("hashchange", route);
  if (key() === null) show("login"); else start();
});
