// The chat page of one app: /apps/{app}. See docs/api.md for the API and the events.
//
// What is on screen = the stored history (GET …/conversations/{id}) + replies still being
// written (built from the event stream) + the user's sends not yet accepted. A reply is in
// the history once its `final` or `error` event went out, so events of requests the history
// already answers are ignored, and a reload never shows a reply twice.
import { api, el, randomId, sleep, store } from "/common.js";
import { resultsOf } from "/cards.js";
import { messageNode, setCards, setMeta, setRole, setText } from "/messages.js";

const STEP_WORDS = {
  discovery: "Understanding what you like…",
  score: "Scoring the catalog…",
  copy: "Writing…",
  ask: "Thinking of a question…",
};
const EVENT_TYPES = ["started", "step_started", "step_finished", "token", "tool_result",
                     "final", "error", "reset"];
const SEND_ATTEMPTS = 6;       // a send is retried (same Idempotency-Key) this often by itself
const REOPEN_MAX_MS = 30000;   // longest wait before reopening a stream the browser gave up on
const POLL_MS = 2000;          // history polling when no event stream can be had (API keys)
const AWAITING_RECENT_MS = 15 * 60 * 1000;  // unanswered questions younger than this are
                                            // shown as waiting (the events' retention)

const appName = decodeURIComponent(location.pathname.replace(/\/+$/, "").split("/").pop());
const base = `/v1/apps/${encodeURIComponent(appName)}`;
const conversationKey = `tidepool.conversation.${appName}`;
const apiKeyKey = `tidepool.api-key.${appName}`;

const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);
const ui = {
  title: $("title"), connection: $("connection"), newConversation: $("new-conversation"),
  banner: $("banner"), greeting: $("greeting"), examples: $("examples"),
  messages: $("messages"), progress: $("progress"), composer: $("composer"), input: $("input"),
  send: $("send"), announcer: $("announcer"), keyForm: $("api-key-form"), key: $("api-key"),
  scroll: document.querySelector("[data-scroll]"),
};

let app = null;
let conversationId = null;
let generation = 0;            // bumped by "New conversation": late results of the old one drop
let source = null;             // the EventSource of the current conversation
let reopenDelay = 1000;
let pollTimer = null;
const seenEvents = new Set();  // event ids handled (ids are REQUEST/RUN/SEQ)
const answered = new Set();    // request ids whose reply is on screen for good
const userRequests = new Set();// request ids of the user messages on screen
const awaiting = new Set();    // request ids sent from this page and not answered yet
const pending = new Map();     // request id → {run, text, cards, sawCards, step, node}
const localSends = new Set();  // sends not accepted yet: {text, key, node}

// ---- rendering

// Keeps the newest line in view, unless the reader scrolled up to read something older.
function keepingScroll(change) {
  const box = ui.scroll;
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 96;
  change();
  if (atBottom) box.scrollTop = box.scrollHeight;
}

function showBanner(message, retry) {
  ui.banner.replaceChildren(el("span", {}, message),
    retry ? el("button", { type: "button", class: "button-quiet", onclick: retry }, "Try again")
          : "");
  ui.banner.hidden = false;
}

function updateIntro() {
  const empty = ui.messages.children.length === 0;
  ui.examples.hidden = !empty || !app?.examples?.length;
}

function updateProgress() {
  let words = "";
  for (const p of pending.values()) {
    if (p.step) words = STEP_WORDS[p.step] ?? p.step;
  }
  if (!words && (pending.size > 0 || awaiting.size > 0)) words = "Waiting for the advisor…";
  if (ui.progress.textContent !== words) ui.progress.textContent = words;
}

function setConnection(state) {
  const words = { connecting: "Connecting…", connected: "Connected",
                  reconnecting: "Reconnecting…", offline: "Offline, retrying…",
                  polling: "Updates every few seconds" };
  ui.connection.dataset.state = state;
  ui.connection.textContent = words[state] ?? state;
}

// ---- history

async function loadHistory() {
  const gen = generation;
  const { data } = await api(`${base}/conversations/${encodeURIComponent(conversationId)}`,
                             { headers: authHeaders() });
  if (gen !== generation) return;
  const messages = Array.isArray(data?.messages) ? data.messages : [];
  const nodes = messages.map((m) => {
    const requestId = m.request_id ?? m.id;
    if (m.role === "user") userRequests.add(requestId);
    else answered.add(requestId);
    return messageNode(m.role, textOf(m.text), { cards: resultsOf(m.cards), requestId });
  });
  for (const id of answered) {
    pending.delete(id);
    awaiting.delete(id);
  }
  // A recent question without a reply is still queued or running (after a reload, say).
  const recent = (Date.now() - AWAITING_RECENT_MS) * 1000;
  for (const m of messages) {
    const requestId = m.request_id ?? m.id;
    if (m.role === "user" && !answered.has(requestId) && m.created_micros > recent) {
      awaiting.add(requestId);
    }
  }
  keepingScroll(() => ui.messages.replaceChildren(...nodes,
    ...[...pending.values()].map((p) => p.node), ...[...localSends].map((s) => s.node)));
  updateIntro();
  updateProgress();
}

// A reply that is not a string is sent as JSON (docs/apps.md); show it rather than nothing.
function textOf(text) {
  if (typeof text === "string") return text;
  return text === undefined || text === null ? "" : JSON.stringify(text);
}

// ---- events

const streamKey = () => `tidepool.stream.${appName}.${conversationId}`;

// The last event id and the partial replies are saved together, so that a reload resumes
// right after that event with the text that came before it.
function saveStream(lastId) {
  const partial = {};
  for (const [id, p] of pending) {
    partial[id] = { run: p.run, text: p.text, cards: p.cards, sawCards: p.sawCards };
  }
  const saved = readStream();
  store.set(sessionStorage, streamKey(),
            JSON.stringify({ last: lastId || saved.last || null, pending: partial }));
}

function readStream() {
  try {
    return JSON.parse(store.get(sessionStorage, streamKey())) ?? {};
  } catch {
    return {};
  }
}

function restorePending() {
  const saved = readStream().pending ?? {};
  for (const [id, p] of Object.entries(saved)) {
    if (answered.has(id) || pending.has(id)) continue;
    const entry = pendingFor(id, p.run);
    Object.assign(entry, { text: p.text ?? "", cards: p.cards ?? null, sawCards: !!p.sawCards });
    renderPending(entry);
  }
}

function pendingFor(requestId, run) {
  let p = pending.get(requestId);
  if (!p) {
    p = { run, text: "", cards: null, sawCards: false, step: null,
          node: messageNode("assistant", "", { requestId, state: "streaming" }) };
    pending.set(requestId, p);
    keepingScroll(() => ui.messages.append(p.node));
    updateIntro();
  }
  return p;
}

function renderPending(p) {
  keepingScroll(() => {
    setText(p.node, p.text);
    setCards(p.node, p.cards);
  });
}

function handleEvent(type, event) {
  let data;
  try {
    data = JSON.parse(event.data);
  } catch {
    return;
  }
  if (type === "reset") {
    // The server cannot resume where we asked. The history has every finished reply; a new
    // stream without an id replays what is retained, rebuilding replies still being written
    // (and not asking for the lost id again when it reconnects).
    pending.forEach((p) => p.node.remove());
    pending.clear();
    seenEvents.clear();
    store.set(sessionStorage, streamKey(), JSON.stringify({ last: null, pending: {} }));
    const gen = generation;
    loadHistory().catch(() => {}).then(() => gen === generation && openStream());
    return;
  }
  // data.id first: an event without an `id:` line would report the previous event's id.
  const id = data?.id || event.lastEventId || "";
  if (id && seenEvents.has(id)) return;
  if (id) seenEvents.add(id);
  const requestId = data?.request_id;
  if (!requestId || answered.has(requestId)) {
    saveStream(id);
    return;
  }
  let p = pending.get(requestId);
  // A newer run of the request replaces the earlier one, so progress of the other run is
  // stale. Its final or error is not: a request has exactly one, whichever run sent it.
  const stale = p && data.run !== undefined && p.run !== undefined && data.run !== p.run;
  if (stale && !["started", "final", "error"].includes(type)) return;
  switch (type) {
    case "started":
      p = pendingFor(requestId, data.run);
      if (p.run !== data.run) Object.assign(p, { run: data.run, text: "", cards: null,
                                                 sawCards: false });
      p.step = null;
      renderPending(p);
      break;
    case "step_started":
      pendingFor(requestId, data.run).step = data.step;
      break;
    case "step_finished":
      pendingFor(requestId, data.run);
      break;
    case "token":
      p = pendingFor(requestId, data.run);
      p.text += textOf(data.text);
      renderPending(p);
      break;
    case "tool_result":
      p = pendingFor(requestId, data.run);
      if (data.name === "recommendations") {
        p.cards = Array.isArray(data.data?.results) ? data.data.results : [];
        p.sawCards = true;
        renderPending(p);
      }
      break;
    case "final":
      finish(requestId, "assistant", textOf(data.text),
             p?.sawCards && (!stale || !resultsOf(data.cards)) ? p.cards : resultsOf(data.cards));
      break;
    case "error":
      finish(requestId, "error", data.message || "Sorry, something went wrong. Please try again.");
      break;
  }
  updateProgress();
  saveStream(id);
}

function finish(requestId, role, text, cards = null) {
  const p = pending.get(requestId);
  pending.delete(requestId);
  answered.add(requestId);
  awaiting.delete(requestId);
  // The streaming message becomes the reply in place, so nothing the reader holds moves.
  const node = p?.node ?? messageNode(role, text, { requestId });
  keepingScroll(() => {
    setRole(node, role);
    setText(node, text);
    setCards(node, cards);
    delete node.dataset.state;
    if (!p) ui.messages.append(node);
  });
  const count = cards?.length ? ` (${cards.length} recommendations)` : "";
  ui.announcer.textContent = role === "error" ? `Problem: ${text}` : `Advisor: ${text}${count}`;
  // Sent from another tab or device: the history has the question this answers.
  if (!userRequests.has(requestId) && localSends.size === 0) loadHistory().catch(() => {});
}

function openStream() {
  closeStream();
  if (app?.requires_api_key) {
    // EventSource cannot send the X-API-Key header: follow the history instead.
    setConnection("polling");
    poll();
    return;
  }
  const last = readStream().last;
  const url = `${base}/conversations/${encodeURIComponent(conversationId)}/events` +
              (last ? `?last_event_id=${encodeURIComponent(last)}` : "");
  const es = new EventSource(url);
  source = es;
  setConnection("connecting");
  es.onopen = () => {
    if (source !== es) return;
    reopenDelay = 1000;
    setConnection("connected");
  };
  es.onerror = () => {
    if (source !== es) return;
    // CONNECTING: the browser reconnects by itself and sends Last-Event-ID. CLOSED: it gave
    // up (an HTTP error), so reopen later with the last id we saved.
    if (es.readyState === EventSource.CONNECTING) {
      setConnection("reconnecting");
      return;
    }
    setConnection("offline");
    es.close();
    const gen = generation;
    setTimeout(() => gen === generation && source === es && openStream(), reopenDelay);
    reopenDelay = Math.min(reopenDelay * 2, REOPEN_MAX_MS);
  };
  for (const type of EVENT_TYPES) {
    es.addEventListener(type, (event) => source === es && handleEvent(type, event));
  }
}

function closeStream() {
  source?.close();
  source = null;
  clearTimeout(pollTimer);
}

async function poll() {
  const gen = generation;
  if (awaiting.size > 0) await loadHistory().catch(() => {});
  if (gen === generation) pollTimer = setTimeout(poll, POLL_MS);
}

// ---- sending

function authHeaders() {
  const key = store.get(localStorage, apiKeyKey);
  return app?.requires_api_key && key ? { "X-API-Key": key } : {};
}

function send(text) {
  if (!text.trim() || !conversationId) return;
  const job = { text, key: randomId(), node: messageNode("user", text, { state: "sending" }) };
  localSends.add(job);
  keepingScroll(() => ui.messages.append(job.node));
  ui.scroll.scrollTop = ui.scroll.scrollHeight;
  updateIntro();
  deliver(job);
}

// Posts one send, retrying network errors, 429 and 5xx with the same Idempotency-Key: the
// server then answers with the message it already stored instead of storing a second one.
async function deliver(job) {
  const gen = generation;
  job.node.dataset.state = "sending";
  setMeta(job.node);
  for (let attempt = 1; ; attempt++) {
    try {
      const { data } = await api(
        `${base}/conversations/${encodeURIComponent(conversationId)}/messages`,
        { method: "POST", body: { text: job.text },
          headers: { "Idempotency-Key": job.key, ...authHeaders() } });
      if (gen !== generation) return;
      localSends.delete(job);
      const requestId = data?.message_id;
      job.node.dataset.state = "sent";
      setMeta(job.node);
      if (requestId) {
        job.node.dataset.requestId = requestId;
        userRequests.add(requestId);
        if (!answered.has(requestId)) awaiting.add(requestId);
      }
      updateProgress();
      return;
    } catch (error) {
      if (gen !== generation) return;
      const retryable = error.status === 0 || error.status === 429 || error.status >= 500;
      if (!retryable || attempt >= SEND_ATTEMPTS) {
        job.node.dataset.state = "failed";
        // Retrying helps only with trouble on the way; a refused text has to change first.
        const action = retryable
          ? el("button", { type: "button", class: "button-quiet", dataset: { testid: "retry" },
                           onclick: () => deliver(job) }, "Retry")
          : el("button", { type: "button", class: "button-quiet", dataset: { testid: "edit" },
                           onclick: () => editFailed(job) }, "Edit");
        setMeta(job.node, `Not sent: ${error.message} `, action);
        return;
      }
      setMeta(job.node, "Having trouble sending, retrying…");
      const wait = error.retryAfterSeconds ? error.retryAfterSeconds * 1000
                                           : Math.min(500 * 2 ** attempt, 8000);
      await sleep(wait);
      if (gen !== generation) return;
    }
  }
}

function editFailed(job) {
  localSends.delete(job);
  job.node.remove();
  ui.input.value = job.text;
  autosize();
  ui.input.focus();
  updateIntro();
}

// ---- conversations

async function startConversation({ fresh = false } = {}) {
  const gen = ++generation;
  closeStream();
  for (const set of [seenEvents, answered, userRequests, awaiting, localSends]) set.clear();
  pending.clear();
  ui.messages.replaceChildren();
  ui.banner.hidden = true;
  updateProgress();
  try {
    conversationId = fresh ? null : store.get(localStorage, conversationKey);
    if (conversationId) {
      try {
        await loadHistory();
      } catch (error) {
        if (error.status !== 404 && error.status !== 400) throw error;
        conversationId = null;  // gone (or another app's): start a new one
      }
    }
    if (!conversationId) {
      const { data } = await api(`${base}/conversations`, { method: "POST", body: {},
                                                            headers: authHeaders() });
      if (gen !== generation) return;
      conversationId = data.id;
      store.set(localStorage, conversationKey, conversationId);
    }
    if (gen !== generation) return;
    restorePending();
    updateIntro();
    updateProgress();
    ui.send.disabled = false;
    ui.newConversation.disabled = false;
    openStream();
  } catch (error) {
    if (gen !== generation) return;
    setConnection("offline");
    if (app.requires_api_key && (error.status === 401 || error.status === 403)) {
      store.remove(localStorage, apiKeyKey);  // ask again
      ui.keyForm.hidden = false;
      showBanner(error.message);
      return;
    }
    showBanner(`Couldn't open the conversation: ${error.message}`, () => startConversation());
  }
}

async function init() {
  try {
    const { data } = await api("/v1/apps");
    app = (data?.apps ?? []).find((a) => a.name === appName) ?? null;
  } catch (error) {
    showBanner(`Couldn't reach the server: ${error.message}`, () => location.reload());
    setConnection("offline");
    return;
  }
  if (!app) {
    ui.title.textContent = "Not found";
    showBanner(`There is no app named “${appName}” here.`);
    ui.banner.append(" ", el("a", { href: "/" }, "See all apps"));
    setConnection("offline");
    return;
  }
  document.title = `${app.title || app.name} · tidepool`;
  ui.title.textContent = app.title || app.name;
  ui.greeting.textContent = app.greeting || "Hello! How can I help?";
  ui.examples.querySelector("ul").replaceChildren(...(app.examples ?? []).map((example) =>
    el("li", {}, el("button", { type: "button", class: "example", dataset: { testid: "example" },
                                onclick: () => { send(example); ui.input.focus(); } },
                   example))));
  if (app.requires_api_key && !store.get(localStorage, apiKeyKey)) {
    ui.keyForm.hidden = false;
    ui.key.focus();
    return;  // the key form's submit starts the conversation
  }
  startConversation();
}

// ---- input

function autosize() {
  ui.input.style.height = "auto";
  ui.input.style.height = `${Math.min(ui.input.scrollHeight, 200)}px`;
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  if (ui.send.disabled || !ui.input.value.trim()) return;
  send(ui.input.value);
  ui.input.value = "";
  autosize();
  ui.input.focus();
});

ui.input.addEventListener("keydown", (event) => {
  // Enter sends; Shift+Enter is a new line; Enter that confirms an IME composition is neither.
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.input.addEventListener("input", autosize);

ui.newConversation.addEventListener("click", async () => {
  await startConversation({ fresh: true });
  ui.input.focus();
});

ui.keyForm.addEventListener("submit", (event) => {
  event.preventDefault();
  store.set(localStorage, apiKeyKey, ui.key.value.trim());
  ui.keyForm.hidden = true;
  startConversation();
});

init();
