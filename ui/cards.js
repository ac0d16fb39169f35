// Recommendation cards: one per result of the scoring tool (docs/scent-advisor.md). Fields are
// read defensively, because other apps reuse the format with other meanings (the gift app's
// notes are "interests" and "traits" rather than top/heart/base).
import { el } from "/common.js";

const MINUS = "\u2212";

export function formatPoints(points) {
  const n = Number(points);
  if (!Number.isFinite(n)) return "";
  if (n > 0) return `+${n}`;
  return n < 0 ? `${MINUS}${Math.abs(n)}` : "0";
}

// The results array held by a message's or a final event's `cards` ({recommendations: {…}}).
export function resultsOf(cards) {
  const results = cards?.recommendations?.results;
  return Array.isArray(results) ? results : null;
}

export function cardList(results) {
  if (!Array.isArray(results)) return null;
  if (results.length === 0) {
    return el("p", { class: "cards-empty" }, "Nothing in the catalog fits all of that yet.");
  }
  return el("ol", { class: "cards", "aria-label": "Recommendations" },
            results.filter((r) => r && typeof r === "object").map(card));
}

function card(item, index) {
  const tiers = item.notes && typeof item.notes === "object"
    ? Object.entries(item.notes).filter(([, list]) => Array.isArray(list) && list.length > 0)
    : [];
  const points = Array.isArray(item.points) ? item.points : [];
  const families = [item.family, ...(Array.isArray(item.facets) ? item.facets : [])]
    .filter(Boolean);
  return el("li", { class: "card", dataset: { testid: "card" } },
    el("div", { class: "card-head" },
      el("span", { class: "card-rank", "aria-hidden": "true" }, String(index + 1)),
      el("div", { class: "card-title" },
        el("h3", { class: "card-name", dataset: { testid: "card-name" } }, item.name ?? "Untitled"),
        item.house ? el("p", { class: "card-house" }, item.house) : null),
      item.score !== undefined
        ? el("p", { class: "card-score", dataset: { testid: "card-score" } },
             el("span", { class: "visually-hidden" }, "Score "), String(item.score),
             el("span", { class: "card-score-label", "aria-hidden": "true" }, "score"))
        : null),
    item.price_display
      ? el("p", { class: "card-price" },
           el("strong", { dataset: { testid: "card-price" } }, item.price_display),
           item.size_ml ? el("span", { class: "card-size" }, ` · ${item.size_ml} ml`) : "")
      : null,
    families.length > 0
      ? el("p", { class: "card-families" },
           el("span", { class: "visually-hidden" }, "Family: "),
           families.map((f) => el("span", { class: "chip" }, f)))
      : null,
    item.description ? el("p", { class: "card-description" }, item.description) : null,
    tiers.length > 0
      ? el("dl", { class: "card-notes" },
           tiers.map(([tier, list]) => el("div", {},
             el("dt", {}, tier.charAt(0).toUpperCase() + tier.slice(1)),
             el("dd", {}, list.join(", ")))))
      : null,
    points.length > 0
      ? el("details", { class: "card-why" },
          el("summary", {}, "Why this pick"),
          el("ul", { class: "points", dataset: { testid: "card-points" } },
            points.map((p) => el("li", {},
              el("span", { class: "point-reason" }, p?.reason ?? ""),
              el("span", { class: `point-value${Number(p?.points) < 0 ? " is-negative" : ""}` },
                 formatPoints(p?.points))))))
      : null);
}
