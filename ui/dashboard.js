// The operators' dashboard: polls GET /v1/dashboard every second. The JSON is still being
// finalized, so every field is optional: what is missing is simply not shown. Where the server
// of today names a field differently from the agreed shape (`subscription` for `name`,
// `undelivered_messages` for `backlog`, `revision` for `number`, `time` or `seconds_ago` for
// `at`), both are read.
import { el } from "/common.js";
import { drawChart } from "/charts.js";

const POLL_MS = 1000;
const WINDOW_MS = 5 * 60 * 1000;
const MAX_DECISIONS = 20;
const RATE_WINDOW_MS = 5000;

const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);
const ui = {
  status: $("dashboard-status"), pools: $("pools"), subscriptions: $("subscriptions-table"),
  web: $("web"), decisions: $("decisions-table"),
  throughput: $("throughput-chart"), latency: $("latency-chart"),
  throughputLegend: document.querySelector("[data-legend=throughput]"),
  latencyLegend: document.querySelector("[data-legend=latency]"),
};

// Points for the charts, [timeMs, value]; counters are kept a few seconds to make rates.
const history = { accepted: [], replies: [], p50: [], p99: [] };
const counters = { accepted: [], replies: [] };
let lastOk = 0;

const isNum = (v) => typeof v === "number" && Number.isFinite(v);
const list = (v) => (Array.isArray(v) ? v : []);
const number = (v) => (isNum(v) ? v.toLocaleString() : "–");
const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

function duration(seconds) {
  if (!isNum(seconds)) return "–";
  seconds = Math.floor(seconds);
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
  return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
}

// `at` may come as an ISO string or as seconds, milliseconds or microseconds since the epoch;
// `secondsAgo` is the fallback when a record only says how long ago it was.
function timeMs(at, secondsAgo) {
  if (isNum(at)) return at > 1e14 ? at / 1000 : at > 1e11 ? at : at * 1000;
  if (typeof at === "string") return Date.parse(at);
  return isNum(secondsAgo) ? Date.now() - secondsAgo * 1000 : NaN;
}

function when(at, secondsAgo) {
  const ms = timeMs(at, secondsAgo);
  if (Number.isFinite(ms)) return new Date(ms).toLocaleTimeString();
  return at === undefined || at === null ? "–" : String(at);
}

function trim(points, now) {
  while (points.length > 0 && points[0][0] < now - WINDOW_MS) points.shift();
}

// Rate of a counter over the last RATE_WINDOW_MS: per-second deltas of small integer counts
// jump between 2 and 3 and draw a saw; a few seconds' window reads as the trend.
function rateOf(key, value, now) {
  if (!isNum(value)) return;
  const kept = counters[key];
  // A counter that went down means the web tier restarted: start over from here.
  if (kept.length > 0 && value < kept[kept.length - 1][1]) kept.length = 0;
  kept.push([now, value]);
  while (kept.length > 2 && kept[1][0] <= now - RATE_WINDOW_MS) kept.shift();
  const [t0, v0] = kept[0];
  if (now > t0) history[key].push([now, ((value - v0) * 1000) / (now - t0)]);
}

// The POST latency of the server's recent window. A window without a single POST in it has no
// latency (the server sends 0 with `count: 0`): shown as no data, not as 0 ms.
function latencyOf(web) {
  const latency = web?.post_latency_ms;
  if (!latency || typeof latency !== "object" || latency.count === 0) return {};
  return latency;
}

function record(data, now) {
  const web = data?.web ?? {};
  rateOf("accepted", web.messages_accepted_total, now);
  rateOf("replies", web.replies_stored_total, now);
  const latency = latencyOf(web);
  if (isNum(latency.p50)) history.p50.push([now, latency.p50]);
  if (isNum(latency.p99)) history.p99.push([now, latency.p99]);
  for (const points of Object.values(history)) trim(points, now);
}

// ---- pools

function instanceChip(instance) {
  const parts = [instance.id, instance.state];
  if (instance.revision !== undefined) parts.push(`r${instance.revision}`);
  const inflight = isNum(instance.inflight) && instance.inflight >= 0 ? instance.inflight : null;
  if (inflight !== null) parts.push(`${inflight} in flight`);
  if (instance.pulling) parts.push("pulling");
  return el("li", { class: "instance", dataset: { state: instance.state ?? "unknown" },
                    title: parts.filter((p) => p !== undefined).join(" · ") },
    instance.id !== undefined ? `${instance.id} ` : "",
    el("span", { class: "instance-state" }, instance.state ?? "?"),
    instance.revision !== undefined ? ` · r${instance.revision}` : "",
    inflight !== null ? ` · ${inflight} in flight` : "",
    instance.pulling === false ? " · not pulling" : "");
}

// "running 3 (r2 ×2, r3 ×1) · draining 1 (r2 ×1)"
function stateSummary(instances) {
  const byState = new Map();
  for (const i of instances) {
    const state = i.state ?? "unknown";
    if (!byState.has(state)) byState.set(state, new Map());
    const revisions = byState.get(state);
    const revision = i.revision !== undefined ? `r${i.revision}` : "r?";
    revisions.set(revision, (revisions.get(revision) ?? 0) + 1);
  }
  return [...byState].map(([state, revisions]) => {
    const total = [...revisions.values()].reduce((a, b) => a + b, 0);
    const split = [...revisions].map(([r, n]) => `${r} ×${n}`).join(", ");
    return `${state} ${total} (${split})`;
  }).join(" · ");
}

function poolNode(pool) {
  const instances = list(pool.instances).filter((i) => i && typeof i === "object");
  const facts = [["desired", pool.desired], ["min", pool.min], ["max", pool.max]]
    .filter(([, v]) => v !== undefined).map(([k, v]) => `${k} ${v}`)
    .concat(pool.min === undefined && typeof pool.scaling === "string" ? [pool.scaling] : [])
    .join(" · ");
  const revisions = list(pool.revisions)
    .map((r) => `r${r?.number ?? r?.revision ?? "?"} ${isNum(r?.percent) ? `${r.percent}%` : ""}`
    .trim());
  const decision = pool.last_decision;
  return el("div", { class: "pool", dataset: { testid: "pool", pool: pool.name ?? "" } },
    el("div", { class: "pool-head" },
      el("h3", {}, pool.name ?? "unnamed pool"),
      facts ? el("span", { class: "pool-facts" }, facts) : null),
    instances.length > 0
      ? el("p", { class: "pool-line", dataset: { testid: "pool-states" } },
           `${instances.length} instance${instances.length === 1 ? "" : "s"}: `,
           stateSummary(instances))
      : el("p", { class: "pool-line" }, "No instances."),
    instances.length > 0
      ? el("ul", { class: "instances", "aria-label": `Instances of ${pool.name ?? "the pool"}` },
           instances.map(instanceChip))
      : null,
    revisions.length > 0 ? el("p", { class: "pool-line" }, `Traffic: ${revisions.join(" · ")}`)
                         : null,
    pool.backlog && typeof pool.backlog === "object"
      ? el("p", { class: "pool-line" },
           `Backlog ${number(pool.backlog.backlog ?? pool.backlog.undelivered_messages)}, ` +
           `oldest unacked ${duration(pool.backlog.oldest_unacked_age_seconds)}`)
      : null,
    decision && typeof decision === "object"
      ? el("p", { class: "pool-line" },
           `Last decision ${when(decision.at ?? decision.time, decision.seconds_ago)}: ` +
           `desired ${decision.desired ?? "?"}`,
           decision.reason ? `, ${decision.reason}` : "")
      : null);
}

// ---- render

// An empty table is hidden, and the "nothing yet" line beside it shown instead.
function renderTable(table, rows, emptyKey) {
  table.tBodies[0].replaceChildren(...rows);
  table.hidden = rows.length === 0;
  const empty = document.querySelector(`[data-empty=${emptyKey}]`);
  if (empty) empty.hidden = rows.length > 0;
}

// "projects/tidepool/subscriptions/scent-advisor-workers" reads as its last part.
const shortName = (name) => (typeof name === "string" ? name.split("/").pop() : "?");

function legend(node, items) {
  node.replaceChildren(...items.map(({ label, color, dashed, value }) =>
    el("span", {},
      el("span", { class: `legend-swatch${dashed ? " is-dashed" : ""}`,
                   style: `border-color: ${color}` }),
      `${label} `, el("strong", {}, value))));
}

const lastValue = (points) => (points.length ? points[points.length - 1][1] : undefined);
const rate = (v) => (isNum(v) ? `${v.toFixed(v < 10 ? 1 : 0)}/s` : "–");
const ms = (v) => (isNum(v) ? `${v.toFixed(v < 10 ? 1 : 0)} ms` : "–");

function drawCharts(now) {
  const c1 = cssVar("--series-1");
  const c2 = cssVar("--series-2");
  const throughput = [
    { label: "accepted", color: c1, points: history.accepted },
    { label: "replies", color: c2, dashed: true, points: history.replies },
  ];
  const latency = [
    { label: "p50", color: c2, dashed: true, points: history.p50 },
    { label: "p99", color: c1, points: history.p99 },
  ];
  drawChart(ui.throughput, throughput,
            { windowMs: WINDOW_MS, now, format: (v) => `${+v.toFixed(2)}/s` });
  drawChart(ui.latency, latency,
            { windowMs: WINDOW_MS, now, format: (v) => `${+v.toFixed(1)} ms` });
  const t = throughput.map((s) => ({ ...s, value: rate(lastValue(s.points)) }));
  const l = latency.map((s) => ({ ...s, value: ms(lastValue(s.points)) }));
  legend(ui.throughputLegend, t);
  legend(ui.latencyLegend, l);
  // The canvas is an image to assistive technology: its label says what it shows now.
  const spoken = (series) => series.map((s) => `${s.label} ${s.value}`).join(", ");
  ui.throughput.setAttribute("aria-label", `Throughput now: ${spoken(t)}`);
  ui.latency.setAttribute("aria-label", `POST latency now: ${spoken(l)}`);
}

function render(data, now) {
  const pools = list(data?.pools).filter((p) => p && typeof p === "object");
  ui.pools.replaceChildren(...(pools.length > 0
    ? pools.map(poolNode) : [el("p", { class: "empty" }, "No pools reported.")]));

  renderTable(ui.subscriptions, list(data?.subscriptions).filter(Boolean).map((s) =>
    el("tr", { dataset: { testid: "backlog", subscription: s.name ?? s.subscription ?? "" } },
      el("th", { scope: "row", title: s.name ?? s.subscription },
         shortName(s.name ?? s.subscription)),
      el("td", { class: "num" }, number(s.backlog ?? s.undelivered_messages)),
      el("td", { class: "num" }, duration(s.oldest_unacked_age_seconds)))), "subscriptions");

  const web = data?.web ?? {};
  const webRows = [["Messages accepted", number(web.messages_accepted_total)],
                   ["Replies stored", number(web.replies_stored_total)],
                   ["Events received", number(web.events_received_total)],
                   ["POST latency p50", ms(latencyOf(web).p50)],
                   ["POST latency p99", ms(latencyOf(web).p99)]];
  ui.web.tBodies[0].replaceChildren(...webRows.map(([label, value]) =>
    el("tr", {}, el("th", { scope: "row" }, label), el("td", { class: "num" }, value))));

  // Newest first, whatever order the server keeps them in (records without a time last).
  const stamp = (d) => timeMs(d.at ?? d.time, d.seconds_ago);
  const decisions = list(data?.decisions).filter(Boolean)
    .sort((a, b) => (stamp(b) || 0) - (stamp(a) || 0)).slice(0, MAX_DECISIONS);
  renderTable(ui.decisions, decisions.map((d) =>
    el("tr", { dataset: { testid: "decision" } },
      el("td", {}, when(d.at ?? d.time, d.seconds_ago)),
      el("td", {}, d.pool ?? "–"),
      el("td", {}, `${d.from ?? "?"} → ${d.to ?? "?"}`),
      el("td", {}, d.reason ?? ""))), "decisions");

  drawCharts(now);
}

async function poll() {
  const started = Date.now();
  const controller = new AbortController();
  const timeout = setTimeout(() => controller.abort(), 5000);
  try {
    const response = await fetch("/v1/dashboard", { signal: controller.signal,
                                                    headers: { Accept: "application/json" } });
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new Error(data?.error?.message || `HTTP ${response.status}`);
    const now = Date.now();
    record(data, now);
    render(data, now);
    lastOk = now;
    ui.status.dataset.state = "live";
    ui.status.textContent = `Live · updated ${new Date(now).toLocaleTimeString()}`;
  } catch (error) {
    ui.status.dataset.state = "stale";
    const reason = error.name === "AbortError" ? "no answer" : error.message;
    ui.status.textContent = lastOk
      ? `Stale since ${new Date(lastOk).toLocaleTimeString()} (${reason})`
      : `No data: ${reason}`;
    drawCharts(Date.now());  // the window keeps moving so the gap is visible
  } finally {
    clearTimeout(timeout);
    // The next poll starts a second after this one started, and never before this one
    // ended: a slow server does not get a pile of overlapping polls.
    setTimeout(poll, Math.max(0, POLL_MS - (Date.now() - started)));
  }
}

window.addEventListener("resize", () => drawCharts(Date.now()));
poll();
