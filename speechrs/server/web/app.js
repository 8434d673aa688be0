// The speechrs page: plain JavaScript over the server's public API, no framework, no build step, no network
// beyond this server (/v1/models, /v1/audio/voices, /v1/audio/speech, /v1/audio/transcriptions and /translations). Speech arrives as SSE pcm deltas (played as they come, then kept as a WAV); transcripts
// arrive as SSE text deltas and segment events (shown as they come, and kept as SRT).
"use strict";

const RATE = 44100; // Dia's DAC: 44.1 kHz mono s16le deltas
const $ = (id) => document.getElementById(id);
let apiKey = sessionStorage.getItem("speechrs-api-key") || "";
let models = [];
let recorded = null; // a WAV Blob from the microphone, used instead of the file input when set

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

async function api(path, init = {}) {
  const headers = { ...(init.headers || {}) };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  const resp = await fetch(path, { ...init, headers });
  if (resp.status === 401) {
    $("key-form").hidden = false;
    throw new Error("This server wants an API key: enter it above, then try again.");
  }
  if (!resp.ok) {
    let message = `${resp.status} ${resp.statusText}`;
    try {
      message = (await resp.json()).error.message || message; // OpenAI's error body
    } catch (_) { /* not JSON: keep the status line */ }
    throw new Error(message);
  }
  return resp;
}

async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const event = JSON.parse(data);
        if (event.error) throw new Error(event.error.message);
        yield event;
      }
    }
  }
}

function modelOf(family) {
  const m = models.find((m) => m.family === family);
  return m ? m.id : null;
}

async function loadModels() {
  const body = await (await api("/v1/models")).json();
  models = body.data.filter((m) => !m.alias_of); // the served models, not OpenAI's names for them
  $("models").textContent = models.length
    ? "models: " + models.map((m) => `${m.id} (${m.family})`).join(", ")
    : "no models loaded";
  $("speak").hidden = !modelOf("dia");
  $("transcribe").hidden = !modelOf("voxtral");
  if (modelOf("dia")) await loadVoices();
}

async function loadVoices() {
  // the server's named voices (speechrs voices add); the choice is hidden while there are none
  const { data } = await (await api("/v1/audio/voices")).json();
  const select = $("voice");
  select.replaceChildren(select.options[0]);
  for (const v of data) select.add(new Option(`${v.name} (${v.seconds.toFixed(1)} s)`, v.name));
  $("voice-label").hidden = data.length === 0;
}

// ---- speak ----

function base64Bytes(text) {
  const raw = atob(text);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function wavBlob(pieces, rate) {
  const length = pieces.reduce((n, p) => n + p.length, 0);
  const header = new DataView(new ArrayBuffer(44));
  const text = (at, s) => [...s].forEach((c, i) => header.setUint8(at + i, c.charCodeAt(0)));
  text(0, "RIFF"); header.setUint32(4, 36 + length, true); text(8, "WAVE"); text(12, "fmt ");
  header.setUint32(16, 16, true); header.setUint16(20, 1, true); header.setUint16(22, 1, true);
  header.setUint32(24, rate, true); header.setUint32(28, rate * 2, true); header.setUint16(32, 2, true);
  header.setUint16(34, 16, true); text(36, "data"); header.setUint32(40, length, true);
  return new Blob([header, ...pieces], { type: "audio/wav" });
}

function player() {
  // plays s16le pieces back to back as they arrive; silent (but harmless) where no audio output exists
  let ctx = null;
  let at = 0;
  try {
    ctx = new AudioContext({ sampleRate: RATE });
  } catch (_) { return { play() {}, close() {} }; }
  return {
    play(bytes) {
      const s16 = new Int16Array(bytes.buffer, bytes.byteOffset, bytes.length >> 1);
      const buffer = ctx.createBuffer(1, s16.length, RATE);
      const samples = buffer.getChannelData(0);
      for (let i = 0; i < s16.length; i++) samples[i] = s16[i] / 32768;
      const source = ctx.createBufferSource();
      source.buffer = buffer;
      source.connect(ctx.destination);
      at = Math.max(at, ctx.currentTime + 0.05);
      source.start(at);
      at += buffer.duration;
    },
    close() { setTimeout(() => ctx.close(), Math.max(0, (at - ctx.currentTime) * 1000) + 500); },
  };
}

function number(id, parse) {
  const value = $(id).value.trim();
  return value === "" ? undefined : parse(value);
}

async function speak() {
  showError("");
  const body = {
    model: modelOf("dia"), input: $("speak-text").value, response_format: "pcm", stream_format: "sse",
    seed: number("seed", parseInt), temperature: number("temperature", parseFloat),
    cfg_scale: number("cfg-scale", parseFloat), max_tokens: number("max-tokens", parseInt),
    speed: number("speed", parseFloat), voice: $("voice").value || undefined,
  };
  const t0 = performance.now();
  const pieces = [];
  let samples = 0;
  let usage = null;
  const out = player();
  $("speak-status").textContent = "generating…";
  const resp = await api("/v1/audio/speech", {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  for await (const event of sseEvents(resp)) {
    if (event.type === "speech.audio.delta") {
      const bytes = base64Bytes(event.audio);
      pieces.push(bytes);
      samples += bytes.length >> 1;
      out.play(bytes);
      $("speak-status").textContent = `${(samples / RATE).toFixed(1)} s of audio so far…`;
    } else if (event.type === "speech.audio.done") {
      usage = event.usage;
    }
  }
  out.close();
  const seconds = (performance.now() - t0) / 1000;
  const url = URL.createObjectURL(wavBlob(pieces, RATE));
  $("speech-audio").src = url;
  $("speech-download").href = url;
  $("speech-download").hidden = false;
  $("speak-status").textContent = `${(samples / RATE).toFixed(2)} s of speech`;
  const steps = usage ? `, ${(usage.output_tokens / seconds).toFixed(1)} decoder steps/s` : "";
  $("figures").textContent = `speech: ${(samples / RATE).toFixed(2)} s of audio in ${seconds.toFixed(1)} s ` +
    `(${(samples / RATE / seconds).toFixed(2)}x real time${steps})`;
}

// ---- transcribe ----

function clock(seconds) {
  const ms = Math.max(0, Math.round(seconds * 1000));
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(Math.floor(ms / 3600000))}:${pad(Math.floor(ms / 60000) % 60)}:${pad(Math.floor(ms / 1000) % 60)},${pad(ms % 1000, 3)}`;
}

function srtText(segments) {
  return segments.filter((s) => s.text.trim())
    .map((s, i) => `${i + 1}\n${clock(s.start)} --> ${clock(s.end)}\n${s.text.trim()}\n`).join("\n");
}

async function transcribe() {
  showError("");
  const file = recorded || $("audio-file").files[0];
  if (!file) throw new Error("Choose an audio file or record one first.");
  const translate = $("translate").checked;
  const form = new FormData();
  form.append("file", file, file.name || "recording.wav");
  form.append("model", modelOf("voxtral"));
  form.append("response_format", "verbose_json");
  form.append("stream", "true");
  if ($("language").value && !translate) form.append("language", $("language").value);
  $("transcript").textContent = "";
  $("segments").replaceChildren();
  $("srt-download").hidden = true;
  $("transcribe-status").textContent = "encoding audio…";
  const t0 = performance.now();
  const route = translate ? "/v1/audio/translations" : "/v1/audio/transcriptions";
  const resp = await api(route, { method: "POST", body: form });
  const segments = [];
  let done = null;
  for await (const event of sseEvents(resp)) {
    if (event.type === "transcript.text.delta") {
      $("transcript").textContent += event.delta;
      $("transcribe-status").textContent = "transcribing…";
    } else if (event.type === "transcript.text.segment") {
      if (!segments.length) $("transcript").textContent = ""; // the text is shown once: as the segments now
      segments.push(event);
      const item = document.createElement("li");
      const time = document.createElement("time");
      time.textContent = `${event.start.toFixed(2)}–${event.end.toFixed(2)} s`;
      item.append(time, event.text);
      $("segments").append(item);
    } else if (event.type === "transcript.text.done") {
      done = event;
      if (!segments.length) $("transcript").textContent = event.text;
    }
  }
  const seconds = (performance.now() - t0) / 1000;
  $("transcribe-status").textContent = done ? `${segments.length} segment(s)` : "ended without a result";
  if (segments.length) {
    $("srt-download").href = URL.createObjectURL(new Blob([srtText(segments)], { type: "application/x-subrip" }));
    $("srt-download").hidden = false;
  }
  if (done) {
    const tokens = done.usage.output_tokens;
    $("figures").textContent = `${translate ? "translation" : "transcription"}: ${tokens} tokens in ` +
      `${seconds.toFixed(1)} s (${(tokens / seconds).toFixed(1)} tok/s overall)`;
  }
}

// ---- the microphone: MediaRecorder's webm/opus, decoded here and sent as WAV (the server reads wav/flac/ogg/mp3)

let recorder = null;

async function toggleRecording() {
  if (recorder) { recorder.stop(); return; }
  if (!navigator.mediaDevices) throw new Error("This browser gives no microphone here (it needs https or localhost).");
  const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = async () => {
    stream.getTracks().forEach((t) => t.stop());
    recorder = null;
    $("record-button").classList.remove("recording");
    $("record-button").textContent = "Record";
    const ctx = new AudioContext();
    const decoded = await ctx.decodeAudioData(await new Blob(chunks).arrayBuffer());
    const pcm = decoded.getChannelData(0);
    const s16 = new Int16Array(pcm.length);
    for (let i = 0; i < pcm.length; i++) s16[i] = Math.max(-1, Math.min(1, pcm[i])) * 32767;
    recorded = new File([wavBlob([new Uint8Array(s16.buffer)], decoded.sampleRate)], "recording.wav", { type: "audio/wav" });
    ctx.close();
    $("transcribe-status").textContent = `recorded ${decoded.duration.toFixed(1)} s: press Transcribe`;
  };
  recorder.start();
  $("record-button").classList.add("recording");
  $("record-button").textContent = "Stop";
}

// ---- wiring ----

function guarded(button, work, status) {
  $(button).addEventListener("click", async () => {
    $(button).disabled = true;
    try {
      await work();
    } catch (e) {
      showError(e.message);
      $(status).textContent = "failed: see the message above";
    } finally {
      $(button).disabled = false;
    }
  });
}

guarded("speak-button", speak, "speak-status");
guarded("transcribe-button", transcribe, "transcribe-status");
$("record-button").addEventListener("click", () => toggleRecording().catch((e) => showError(e.message)));
$("audio-file").addEventListener("change", () => { recorded = null; });
$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  apiKey = $("api-key").value.trim();
  sessionStorage.setItem("speechrs-api-key", apiKey);
  $("key-form").hidden = true;
  loadModels().catch((err) => showError(err.message));
});
loadModels().catch((e) => showError(e.message));
