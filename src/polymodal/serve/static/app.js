// polymodal web page: plain JavaScript, no framework, no network beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { image: null, name: "image.png", models: [], tasks: {}, history: [], heatmaps: [], words: [],
                busy: false, playing: null, recorder: null };

// ---------------------------------------------------------------- helpers
function toast(message) {
  const el = $("toast");
  el.textContent = message;
  el.classList.add("on");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => el.classList.remove("on"), 6000);
}

async function api(path, body) {
  // body: FormData (multipart) or an object (JSON). Errors carry the server's one-line message.
  const init = body instanceof FormData ? { method: "POST", body }
    : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, init);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  node.append(...children);
  return node;
}

// ---------------------------------------------------------------- models
async function loadModels() {
  const info = await (await fetch("/v1/models")).json();
  state.models = info.models;
  for (const task of ["caption", "vqa", "chat", "transcribe", "generate"]) {
    state.tasks[task] = info.models.find((m) => m.tasks.includes(task));
  }
  const box = $("models");
  box.replaceChildren(...info.models.map((m) => el("span", { class: "model", title: `${m.architecture}, ` +
    `${m.parameters.toLocaleString()} parameters` }, el("b", { text: m.name }), ...m.tasks.map((t) =>
    el("span", { class: "tag", text: t })))));
  if (!info.models.length) box.append(el("span", { class: "model", text: "no models loaded" }));
  setupTrainedControls(state.tasks.caption?.controls || []);
  setupAsk();
  setupMic();
  if (state.tasks.generate) {
    $("draw-card").hidden = false;
    $("draw-meta").textContent = state.tasks.generate.name;
    const controls = state.tasks.generate.controls || [];
    $("draw-where").hidden = !controls.includes("box");  // a layout-trained generator
    $("draw-strict-label").hidden = !controls.includes("strict_box");  // ... whose background codes were fitted
  }
  state.index = info.index;
  if (info.index) {
    $("search-card").hidden = false;
    $("index-meta").textContent = `${info.index.size.toLocaleString()} ${info.index.kind}s`;
  }
  state.limits = info.limits;
}

// ---------------------------------------------------------------- image in
function setImage(blob, name) {
  if (!blob.type.startsWith("image/") && blob.type !== "") {
    toast(`${name} is not an image (${blob.type}); choose a PNG, JPEG, GIF or WebP file`);
    return;
  }
  state.image = blob;
  state.focus = null;  // a new image: the old point means nothing on it
  $("focus-clear").hidden = true;
  state.name = name || "image.png";
  state.history = [];
  $("chat").replaceChildren();
  const base = $("base");
  if (base.src.startsWith("blob:")) URL.revokeObjectURL(base.src);
  base.src = URL.createObjectURL(blob);
  base.onload = () => {
    const tiny = base.naturalWidth < 200;
    base.classList.toggle("tiny", tiny);
    $("heat").classList.toggle("tiny", false);
  };
  $("drop").dataset.empty = "false";
  $("again").disabled = false;
  caption();
}

function setupDrop() {
  const drop = $("drop");
  const pick = () => $("file").click();
  for (const id of ["pick", "pick2"]) $(id).addEventListener("click", (e) => { e.stopPropagation(); pick(); });
  drop.addEventListener("click", () => { if (drop.dataset.empty === "true") pick(); });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(); } });
  $("file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    if (file) setImage(file, file.name);
    e.target.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) drop.addEventListener(type, () => drop.classList.remove("dragging"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer.files[0];
    if (file) setImage(file, file.name);
  });
  window.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith("image/"));
    if (item) setImage(item.getAsFile(), "pasted.png");
  });
  for (const id of ["random", "random2"]) {
    $(id).addEventListener("click", (e) => { e.stopPropagation(); randomScene(); });
  }
}

// ---------------------------------------------------------------- captions
function syncControls() {
  const strategy = $("strategy").value, beam = $("beam"), nbest = $("nbest");
  beam.disabled = strategy !== "beam";
  if (strategy === "greedy") nbest.value = 1;
  nbest.max = strategy === "beam" ? beam.value : 5;
  if (+nbest.value > +nbest.max) nbest.value = nbest.max;
  nbest.disabled = strategy === "greedy";
  $("beam-out").textContent = beam.value;
  $("nbest-out").textContent = nbest.value;
}

async function caption() {
  if (!state.image) return;
  if (state.busy) { state.again = true; return; }  // a newer image or setting: caption once this one is done
  if (!state.tasks.caption) { showCaptionText("No captioning model is loaded.", true); return; }
  state.busy = true;
  $("drop").classList.add("loading");
  stopPlay();
  renderMarks([]);  // the old image's markers would point at nothing
  const form = new FormData();
  form.append("image", state.image, state.name);
  form.append("strategy", $("strategy").value);
  form.append("beam_size", $("beam").value);
  form.append("nbest", $("nbest").value);
  form.append("heatmaps", "true");
  // content controls: sent as comma-separated form fields (the server splits them)
  if ($("no-colours").checked) form.append("omit_words", "colours");  // omitted, not banned: the caption stays true (docs/control.md)
  const mention = $("must-mention").value.split(",").map((w) => w.trim()).filter(Boolean);
  if (mention.length) form.append("force_words", mention.join(","));
  appendTrainedControls(form);
  try {
    const result = await (await api("/v1/caption", form)).json();
    renderCaption(result);
  } catch (err) {
    showCaptionText("No caption: " + err.message, true);
    toast(err.message);
  } finally {
    state.busy = false;
    $("drop").classList.remove("loading");
    document.body.dataset.captions = String(+(document.body.dataset.captions || 0) + 1);  // for tests
    if (state.again) { state.again = false; caption(); }
  }
}

function showCaptionText(text, placeholder) {
  renderMarks([]);
  const p = $("caption");
  p.textContent = text;
  p.classList.toggle("placeholder", !!placeholder);
  $("nbest-list").replaceChildren();
  $("play").hidden = true;
}

function renderCaption(result) {
  state.heatmaps = result.heatmaps || [];
  state.words = result.words;
  const objects = result.objects || [];
  const numberAfter = new Map(objects.map((o, k) => [o.end - 1, k + 1]));  // noun index -> marker number
  renderMarks(objects);
  const p = $("caption");
  p.classList.remove("placeholder");
  if (state.heatmaps.length) {
    p.replaceChildren(...result.words.flatMap((w, i) => {
      const span = el("span", { class: "word", tabindex: "0", "data-index": String(i), text: w });
      span.addEventListener("mouseenter", () => { stopPlay(); showHeat(i); });
      span.addEventListener("focus", () => showHeat(i));
      span.addEventListener("mouseleave", hideHeat);
      span.addEventListener("blur", hideHeat);
      const n = numberAfter.get(i);
      return n ? [span, el("sup", { class: "obj", text: String(n) }), " "] : [span, " "];
    }));
    $("hint").textContent = "Hover or tap a word to see where the model looked." +
      (objects.length ? " Numbered markers: where it looked when it named each object; check they sit on it." : "");
  } else {
    p.textContent = result.captions[0].text;
    $("hint").textContent = result.note || "";
  }
  $("play").hidden = !state.heatmaps.length;
  const ood = $("ood-notice"), unlike = oodNotice(result, "the caption below is a guess, not a description");
  ood.hidden = !unlike;
  ood.textContent = unlike;
  p.classList.toggle("doubtful", !!unlike);
  const scores = result.captions.map((c) => (c.score === null ? 0 : Math.exp(c.score)));
  const top = Math.max(...scores, 1e-9);
  $("nbest-list").replaceChildren(...(result.captions.length > 1 ? result.captions : []).map((c, i) =>
    el("li", {}, el("span", { class: "rank", text: `${i + 1}` }), el("span", { class: "text", text: c.text }),
      el("span", { class: "score", text: c.score === null ? "" : c.score.toFixed(2),
                   title: "length-normalised log-probability" }),
      el("span", { class: "bar" }, Object.assign(el("i"), { style: `width:${(100 * scores[i] / top).toFixed(0)}%` })))));
  const batch = result.batch_size > 1 ? ` · batch of ${result.batch_size}` : "";
  $("meta").textContent = `${result.model} · ${Math.round(result.elapsed_ms)} ms${batch}`;
}

// The image is unlike the training data: say so instead of presenting the output as fact ("" when it is like it).
function oodNotice(result, guess) {
  if (result.in_distribution !== false) return "";
  return "This image is unlike anything the model was trained on " +
    `(out-of-distribution score ${result.ood_score.toFixed(1)}), so ${guess}.`;
}

function renderMarks(objects) {
  $("marks").replaceChildren(...objects.map((o, k) => el("span", {
    class: "mark", text: String(k + 1), title: o.phrase,
    style: `left:${(100 * o.x).toFixed(1)}%;top:${(100 * o.y).toFixed(1)}%`,
  })));
}

function showHeat(i) {
  const heat = $("heat");
  heat.src = "data:image/png;base64," + state.heatmaps[i];
  heat.classList.add("on");
  const focus = $("focus");
  focus.textContent = state.words[i];
  focus.classList.add("on");
  document.querySelectorAll(".word").forEach((w) => w.classList.toggle("active", +w.dataset.index === i));
}

function hideHeat() {
  if (state.playing) return;
  $("heat").classList.remove("on");
  $("focus").classList.remove("on");
  document.querySelectorAll(".word.active").forEach((w) => w.classList.remove("active"));
}

function stopPlay() {
  clearInterval(state.playing);
  state.playing = null;
  $("play").innerHTML = "&#9654; Play";
}

function togglePlay() {
  if (state.playing) { stopPlay(); hideHeat(); return; }
  let i = 0;
  showHeat(i);
  $("play").innerHTML = "&#9632; Stop";
  state.playing = setInterval(() => {
    i += 1;
    if (i >= state.heatmaps.length) { stopPlay(); hideHeat(); return; }
    showHeat(i);
  }, 750);
}

// ---------------------------------------------------------------- questions
function setupAsk() {
  const card = $("ask-card"), chat = state.tasks.chat, vqa = state.tasks.vqa;
  if (!chat && !vqa) {
    card.classList.add("unavailable");
    $("question").disabled = true;
    $("ask-btn").disabled = true;
    $("ask-note").innerHTML = "No question-answering model is loaded. Start the server with a VQA or chat " +
      "model as well: <code>polymodal serve CAPTIONER_DIR VQA_DIR</code>";
    return;
  }
  $("ask-meta").textContent = chat ? `${chat.name} · conversation` : `${vqa.name} · one question at a time`;
  $("ask-note").textContent = chat ? "Follow-up questions keep the conversation so far." : "";
}

function bubble(role, text) {
  const b = el("div", { class: `bubble ${role}`, text });
  $("chat").append(b);
  $("chat").scrollTop = $("chat").scrollHeight;
  return b;
}

async function ask(question) {
  if (!state.image) { toast("Add an image first: drop one, choose a file or draw a random scene"); return; }
  bubble("user", question);
  const reply = bubble("assistant", "");
  reply.classList.add("typing");
  const form = new FormData();
  form.append("image", state.image, state.name);
  try {
    if (state.tasks.chat) {
      const messages = [...state.history, { role: "user", content: question }];
      form.append("messages", JSON.stringify(messages));
      form.append("stream", "true");
      const result = await streamChat(await api("/v1/chat", form), reply);
      markReply(reply, result, "this reply is a guess");
      showPoints(reply, result.points || []);
      state.history = [...messages, { role: "assistant", content: result.message.content }];
    } else {
      form.append("question", question);
      form.append("k", "3");
      showAnswers(reply, await (await api("/v1/vqa", form)).json());
    }
  } catch (err) {
    reply.textContent = err.message;
    reply.classList.add("error");
  } finally {
    reply.classList.remove("typing");
  }
}

// Where a reply pointed before it answered (position, relation and count replies): numbered markers on the image.
function showPoints(reply, points) {
  if (!points.length) return;
  renderMarks(points.map(([x, y], k) => ({ x, y, phrase: `point ${k + 1} of the reply` })));
  reply.append(el("span", { class: "pointed", text: `pointed at ${points.length} ${points.length > 1 ? "places" : "place"}`,
    title: "the numbered markers on the image: where the reply pointed before it answered" }));
}

// Under a reply: how sure the model is (calibrated probability) and, before it, the out-of-distribution notice.
function markReply(reply, result, guess) {
  const unlike = oodNotice(result, guess);
  if (unlike) reply.before(el("p", { class: "ood-notice", role: "alert", text: unlike }));
  reply.classList.toggle("doubtful", !!unlike);
  reply.classList.toggle("not-sure", result.not_sure === true);
  const p = result.confidence ?? result.probability;
  if (p === null || p === undefined) return;
  const unsure = result.not_sure === true || result.confident === false;
  reply.append(el("span", { class: "confidence", text: `${unsure ? "not sure · " : ""}${(100 * p).toFixed(0)}% sure`,
    title: "the model's calibrated probability that this reply is right (docs/reliability.md)" }));
}

function showAnswers(reply, result) {
  const [best, ...alts] = result.answers;
  reply.textContent = best.answer;
  markReply(reply, { ...result, probability: alts.length ? null : result.probability }, "this answer is a guess");
  if (alts.length && best.score !== null) {
    const pct = (a) => `${a.answer} ${(100 * a.score).toFixed(0)}%`;
    reply.append(el("span", { class: "alts", text: [best, ...alts].map(pct).join(" · ") }));
  }
  const image = state.image, name = state.name;  // the image asked about, even if another is shown later
  reply.append(whyButton(async () => {
    const form = new FormData();
    form.append("image", image, name);
    form.append("question", result.question);
    const why = await (await api("/v1/explain", form)).json();
    showWhy(why);
    const top = why.words.filter((w) => w.importance > 0).sort((a, b) => b.importance - a.importance)
      .slice(0, 3).map((w) => `"${w.word}"`);
    reply.querySelector(".why-words")?.remove();
    reply.append(el("span", { class: "why-words",
      text: `rests on ${top.length ? top.join(", ") + " and " : ""}the highlighted part of the image` }));
  }));
}

// ---------------------------------------------------------------- explanations ("why?")
function whyButton(explainIt) {
  const button = el("button", { class: "why", type: "button", text: "why?",
    title: "which parts of the image (and words) this rests on: hiding and showing each part, /v1/explain" });
  button.addEventListener("click", async (e) => {
    e.stopPropagation();
    button.disabled = true;
    try { await explainIt(); } catch (err) { toast(err.message); } finally { button.disabled = false; }
  });
  return button;
}

function showWhy(why) {  // the explanation over the main image, labelled, until a word is hovered
  const heat = $("heat");
  heat.src = "data:image/png;base64," + why.overlay;
  heat.classList.add("on");
  const focus = $("focus");
  focus.textContent = `why: ${why.output}`;
  focus.classList.add("on");
}

async function streamChat(response, bubbleEl) {
  // Server-sent events over fetch (EventSource cannot POST): "event: token" per word, then "event: done".
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "", words = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const type = (event.match(/^event: (.*)$/m) || [])[1];
      const data = JSON.parse((event.match(/^data: (.*)$/m) || [, "{}"])[1]);
      if (type === "token") { words.push(data.token); bubbleEl.textContent = words.join(" "); }
      if (type === "done") { bubbleEl.textContent = data.message.content; return data; }
    }
  }
  return { message: { content: words.join(" ") } };
}

// ---------------------------------------------------------------- search
async function search(text) {
  const results = $("results");
  results.replaceChildren(el("p", { class: "note", text: "Searching…" }));
  try {
    const found = await (await api("/v1/retrieve", { text, k: 12 })).json();
    if (state.index.kind !== "image") {  // an index of captions: a ranked list of texts
      results.replaceChildren(el("ol", { class: "nbest" }, ...found.hits.map((h, i) => el("li", {},
        el("span", { class: "rank", text: `${i + 1}` }), el("span", { class: "text", text: h.path }),
        el("span", { class: "score", text: h.score.toFixed(3) })))));
      return;
    }
    results.replaceChildren(...found.hits.map((h) => {
      const img = el("img", { src: `/v1/index/${h.id}`, alt: h.path, loading: "lazy" });
      const figure = el("figure", { title: h.path }, img, el("figcaption", { text: h.score.toFixed(3) },
        whyButton(async () => {  // the regions of this hit the match with the query rests on, in place
          const why = await (await api("/v1/explain", { item: h.id, text })).json();
          img.src = "data:image/png;base64," + why.overlay;
          figure.classList.add("explained");
        })));
      figure.addEventListener("click", async () => setImage(await (await fetch(`/v1/index/${h.id}`)).blob(),
        h.path.split("/").pop()));
      return figure;
    }));
    if (!found.hits.length) results.replaceChildren(el("p", { class: "note", text: "Nothing found." }));
  } catch (err) {
    results.replaceChildren(el("p", { class: "note", text: err.message }));
  }
}

// ---------------------------------------------------------------- draw: text -> image, then caption or ask about it
async function draw(prompt) {
  const box = $("drawings");
  box.replaceChildren(el("p", { class: "note", text: "Drawing…" }));
  $("draw-note").textContent = "";
  try {
    const request = { prompt, n: 4, seed: Math.floor(Math.random() * 1e6) };
    if (!$("draw-where").hidden && $("draw-where").value) request.box = JSON.parse($("draw-where").value);
    if (request.box && !$("draw-strict-label").hidden && $("draw-strict").checked) request.strict_box = true;
    const result = await (await api("/v1/generate", request)).json();
    box.replaceChildren(...result.images.map((png, i) => {
      const figure = el("figure", { title: `${prompt} (${i + 1})` },
        el("img", { src: "data:image/png;base64," + png, alt: prompt }), el("figcaption", { text: "use this" }));
      figure.addEventListener("click", async () =>  // the drawing becomes the image the page captions and answers about
        setImage(await (await fetch("data:image/png;base64," + png)).blob(), `drawn-${i + 1}.png`));
      return figure;
    }));
    $("draw-note").textContent = (result.unknown_words.length ? `Not known, ignored: ${result.unknown_words.join(", ")}. `
      : "") + `Click a drawing to caption it and ask about it (${Math.round(result.elapsed_ms)} ms).`;
  } catch (err) {
    box.replaceChildren(el("p", { class: "note", text: err.message }));
  }
}

// ---------------------------------------------------------------- wiring
document.addEventListener("DOMContentLoaded", () => {
  setupDrop();
  for (const id of ["strategy", "beam", "nbest"]) $(id).addEventListener("input", syncControls);
  for (const id of ["strategy", "beam", "nbest"]) $(id).addEventListener("change", caption);
  syncControls();
  $("again").addEventListener("click", caption);
  $("no-colours").addEventListener("change", caption);
  $("must-mention").addEventListener("change", caption);  // on Enter or when the field loses focus (once)
  $("control-form").addEventListener("submit", (e) => e.preventDefault());  // Enter: "change" has captioned
  $("play").addEventListener("click", togglePlay);
  $("ask-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("question").value.trim();
    if (q) { $("question").value = ""; ask(q); }
  });
  $("draw-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const p = $("prompt").value.trim();
    if (p) draw(p);
  });
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("query").value.trim();
    if (q) search(q);
  });
  loadModels().catch((err) => toast("Cannot reach the server: " + err.message));
});
