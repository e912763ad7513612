// polymodal web page: spoken questions. The microphone records a question, /v1/vqa transcribes and answers it,
// /v1/speak reads the answer aloud. Loaded before app.js, whose `$`, `state`, `api`, `bubble`, `el`, `toast`
// and `showAnswers` these call.
"use strict";

const MAX_RECORD_MS = 15000;  // a question, not a speech: stop recording after this (the server refuses 60 s)

function setupMic() {
  // Shown only when the server has a speech recognizer and something to answer with, and the browser can record.
  const mic = $("mic");
  const usable = !!(state.tasks.transcribe && (state.tasks.vqa || state.tasks.chat) &&
                    navigator.mediaDevices?.getUserMedia && window.MediaRecorder);
  mic.hidden = !usable;
  mic.disabled = !usable;
  if (usable && !mic.dataset.wired) {
    mic.dataset.wired = "true";
    mic.addEventListener("click", () => (state.recorder ? stopRecording() : startRecording()));
  }
}

function showRecording(on) {
  const mic = $("mic");
  mic.classList.toggle("recording", on);
  mic.setAttribute("aria-pressed", String(on));
  mic.title = on ? "Listening… click to stop and ask" : "Ask aloud: click, speak, click again";
  if (on) { $("heard").hidden = false; $("heard").textContent = "Listening… click the microphone again when done."; }
}

async function startRecording() {
  if (!state.image) { toast("Add an image first: drop one, choose a file or draw a random scene"); return; }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    toast("No microphone: " + err.message);
    return;
  }
  const chunks = [], recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    state.recorder = null;
    showRecording(false);
    askAloud(new Blob(chunks, { type: recorder.mimeType || "audio/webm" }));
  };
  recorder.start();
  state.recorder = recorder;
  state.recordTimer = setTimeout(stopRecording, MAX_RECORD_MS);
  showRecording(true);
}

function stopRecording() {
  clearTimeout(state.recordTimer);
  if (state.recorder && state.recorder.state === "recording") state.recorder.stop();
}

async function askAloud(recording) {
  // The recording goes to /v1/vqa, which transcribes it and answers; the answer is then spoken (/v1/speak).
  const question = bubble("user", ""), reply = bubble("assistant", "");
  question.classList.add("typing");
  reply.classList.add("typing");
  const form = new FormData();
  form.append("image", state.image, state.name);
  const ext = (recording.type.match(/audio\/(\w+)/) || [, "webm"])[1];
  form.append("audio", recording, `question.${ext}`);
  form.append("k", "3");
  try {
    const result = await (await api("/v1/vqa", form)).json();
    question.textContent = result.transcript.text;
    $("heard").hidden = false;
    $("heard").replaceChildren("Heard: ", el("b", { text: result.transcript.text }),
      ` (${result.transcript.duration_s.toFixed(1)} s recorded, answered in ${Math.round(result.elapsed_ms)} ms)`);
    showAnswers(reply, result);
    await speak(result.answers[0].answer);
  } catch (err) {
    question.textContent = "(spoken question)";
    $("heard").hidden = true;
    reply.textContent = err.message;
    reply.classList.add("error");
  } finally {
    question.classList.remove("typing");
    reply.classList.remove("typing");
    document.body.dataset.spoken = String(+(document.body.dataset.spoken || 0) + 1);  // for tests
  }
}

async function speak(text) {
  // The answer read aloud by the server (espeak-ng); without it the page says so once and stays silent.
  const player = $("reply-audio");
  try {
    const audio = await (await api("/v1/speak", { text })).blob();
    if (player.src.startsWith("blob:")) URL.revokeObjectURL(player.src);
    player.src = URL.createObjectURL(audio);
    player.hidden = false;
    await player.play().catch(() => { /* autoplay refused: the controls are there */ });
  } catch (err) {
    player.hidden = true;
    $("ask-note").textContent = "Spoken answers are off: " + err.message;
  }
}
