// The playground: audio in (a file, or a recording), codes and decoded audio out, side by side.
// Plain browser APIs only: no build step, nothing fetched from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const ANALYSIS_RATE = 24000; // both spectrograms at the codec's rate, so their axes agree
let info = null;
let source = null; // {file} or {pcm: Float32Array, rate, blob}
let recorder = null;

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function loadInfo() {
  const response = await fetch("/v1/info");
  info = await response.json();
  $("model").textContent = `${info.model.name} · ${info.sample_rate} Hz · ${info.frame_rate} frames/s · ` +
    `${info.num_quantizers} × ${info.codebook_size} codebooks`;
  for (const kbps of info.bandwidths) {
    const option = new Option(`${kbps} kbps`, kbps);
    $("bandwidth").add(option);
  }
  $("bandwidth").value = info.bandwidths[info.bandwidths.length - 1];
}

function useSource(newSource, blob) {
  source = newSource;
  $("original").src = URL.createObjectURL(blob);
  $("run").disabled = false;
  setStatus("");
}

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (file) useSource({ file }, file);
});

$("record").addEventListener("click", async () => {
  if (recorder) {
    recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    setStatus("recording needs a secure page (https or localhost) and a browser that records", true);
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    setStatus(`no microphone: ${err.message}`, true);
    return;
  }
  const chunks = [];
  recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (event) => chunks.push(event.data);
  recorder.onstop = async () => {
    stream.getTracks().forEach((track) => track.stop());
    recorder = null;
    $("record").textContent = "Record";
    $("record").classList.remove("recording");
    const blob = new Blob(chunks, { type: chunks[0] ? chunks[0].type : "audio/webm" });
    // The browser decodes its own recording format; the server gets plain PCM.
    const audio = await decodeAudio(await blob.arrayBuffer());
    useSource({ pcm: audio.getChannelData(0), rate: audio.sampleRate }, blob);
  };
  recorder.start();
  $("record").textContent = "Stop";
  $("record").classList.add("recording");
  setStatus("recording…");
});

$("run").addEventListener("click", run);

async function run() {
  $("run").disabled = true;
  setStatus("encoding…");
  const started = performance.now();
  try {
    const bandwidth = $("bandwidth").value;
    let response;
    if (source.file) {
      const form = new FormData();
      form.append("file", source.file, source.file.name);
      form.append("bandwidth", bandwidth);
      response = await fetch("/v1/encode", { method: "POST", body: form });
    } else {
      const query = new URLSearchParams({ format: "pcm_f32le", sample_rate: source.rate, bandwidth });
      response = await fetch(`/v1/encode?${query}`, { method: "POST", body: source.pcm.buffer });
    }
    const encoded = await answer(response);
    const encodeSeconds = Number(response.headers.get("X-Encode-Seconds"));
    drawCodes(encoded.codes);
    setStatus("decoding…");
    response = await fetch("/v1/decode?format=wav", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ codes: encoded.codes, num_samples: encoded.num_samples }),
    });
    if (!response.ok) await answer(response);
    const decodeSeconds = Number(response.headers.get("X-Decode-Seconds"));
    const wav = await response.blob();
    $("decoded").src = URL.createObjectURL(wav);
    const original = source.file ? await source.file.arrayBuffer() : null;
    drawSpectrogram($("decoded-spectrogram"), (await decodeAudio(await wav.arrayBuffer())).getChannelData(0));
    drawSpectrogram($("original-spectrogram"),
      original ? (await decodeAudio(original)).getChannelData(0) : resampledPcm(source.pcm, source.rate));
    const seconds = encoded.num_samples / encoded.sample_rate;
    const kbps = (encoded.num_quantizers * Math.log2(info.codebook_size) * encoded.frame_rate) / 1000;
    $("summary").textContent =
      `${seconds.toFixed(2)} s of audio · ${encoded.num_frames} frames × ${encoded.num_quantizers} codes · ` +
      `${kbps} kbps · encode ${(1000 * encodeSeconds).toFixed(0)} ms, decode ${(1000 * decodeSeconds).toFixed(0)} ms ` +
      `on the server · ${(performance.now() - started).toFixed(0)} ms in all`;
    $("results").hidden = false;
    setStatus("done");
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    $("run").disabled = false;
  }
}

async function answer(response) {
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
  return body;
}

async function decodeAudio(buffer) {
  // An offline context needs no audio device, and resamples to the rate it is made with.
  const context = new OfflineAudioContext(1, 1, ANALYSIS_RATE);
  return await context.decodeAudioData(buffer);
}

function resampledPcm(pcm, rate) {
  if (rate === ANALYSIS_RATE) return pcm;
  const out = new Float32Array(Math.floor((pcm.length * ANALYSIS_RATE) / rate));
  for (let i = 0; i < out.length; i++) {
    const x = (i * rate) / ANALYSIS_RATE, j = Math.floor(x), f = x - j;
    out[i] = (pcm[j] || 0) * (1 - f) + (pcm[j + 1] || 0) * f; // linear: enough for a picture
  }
  return out;
}

// ----------------------------------------------------------------------------- pictures
function drawCodes(codes) {
  const canvas = $("codes"), rows = codes.length, frames = codes[0].length;
  canvas.width = frames;
  canvas.height = rows;
  canvas.style.height = `${rows * 12}px`;
  canvas.style.width = "min(100%, 1280px)";
  const context = canvas.getContext("2d");
  const image = context.createImageData(frames, rows);
  for (let q = 0; q < rows; q++) {
    for (let f = 0; f < frames; f++) {
      const [r, g, b] = colour(codes[q][f] / info.codebook_size);
      const at = 4 * (q * frames + f);
      image.data.set([r, g, b, 255], at);
    }
  }
  context.putImageData(image, 0, 0);
}

function drawSpectrogram(canvas, samples) {
  const size = 512, bins = size / 2, columns = canvas.width;
  const context = canvas.getContext("2d");
  const image = context.createImageData(columns, canvas.height);
  const hop = Math.max(1, (samples.length - size) / columns);
  const window = new Float32Array(size).map((_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / size));
  const decibels = [];
  let peak = -Infinity;
  for (let c = 0; c < columns; c++) {
    const start = Math.floor(c * hop), re = new Float32Array(size), im = new Float32Array(size);
    for (let i = 0; i < size; i++) re[i] = (samples[start + i] || 0) * window[i];
    fft(re, im);
    const column = new Float32Array(bins);
    for (let k = 0; k < bins; k++) {
      column[k] = 10 * Math.log10(re[k] * re[k] + im[k] * im[k] + 1e-12);
      peak = Math.max(peak, column[k]);
    }
    decibels.push(column);
  }
  for (let c = 0; c < columns; c++) {
    for (let y = 0; y < canvas.height; y++) {
      const k = Math.floor(((canvas.height - 1 - y) / canvas.height) * bins);
      const level = Math.min(1, Math.max(0, (decibels[c][k] - peak + 80) / 80)); // the top 80 dB
      image.data.set([...colour(level), 255], 4 * (y * columns + c));
    }
  }
  context.putImageData(image, 0, 0);
}

function fft(re, im) {
  // In place, radix 2: re.length is a power of two.
  const n = re.length;
  for (let i = 1, j = 0; i < n; i++) {
    let bit = n >> 1;
    for (; j & bit; bit >>= 1) j ^= bit;
    j ^= bit;
    if (i < j) {
      [re[i], re[j]] = [re[j], re[i]];
      [im[i], im[j]] = [im[j], im[i]];
    }
  }
  for (let length = 2; length <= n; length <<= 1) {
    const angle = (-2 * Math.PI) / length, wr = Math.cos(angle), wi = Math.sin(angle);
    for (let i = 0; i < n; i += length) {
      let ur = 1, ui = 0;
      for (let j = 0; j < length / 2; j++) {
        const a = i + j, b = a + length / 2;
        const tr = re[b] * ur - im[b] * ui, ti = re[b] * ui + im[b] * ur;
        re[b] = re[a] - tr; im[b] = im[a] - ti;
        re[a] += tr; im[a] += ti;
        [ur, ui] = [ur * wr - ui * wi, ur * wi + ui * wr];
      }
    }
  }
}

function colour(t) {
  // Dark blue → purple → orange → pale yellow, like common perceptual colour maps.
  const stops = [[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]];
  const x = Math.min(0.9999, Math.max(0, t)) * (stops.length - 1), i = Math.floor(x), f = x - i;
  return stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
}

loadInfo().catch((err) => setStatus(`cannot reach the server: ${err.message}`, true));
