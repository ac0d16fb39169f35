// One message of the chat list: its speaker (read out, not shown), its text, its cards and a
// line under it for the state of a send. app.js keeps the list; this only builds and updates.
import { el } from "/common.js";
import { cardList } from "/cards.js";

const SPEAKERS = { user: "You", assistant: "Advisor", error: "Problem" };

export function messageNode(role, text, { cards = null, requestId = null, state = null } = {}) {
  const node = el("li", { class: "message", dataset: { testid: "message", role } },
    el("div", { class: "bubble" },
      el("span", { class: "visually-hidden message-speaker" }, `${SPEAKERS[role] ?? role}: `),
      el("p", { class: "message-text" }, text)),
    el("div", { class: "message-cards" }),
    el("p", { class: "message-meta", hidden: true }));
  if (requestId) node.dataset.requestId = requestId;
  if (state) node.dataset.state = state;
  setCards(node, cards);
  return node;
}

export function setRole(node, role) {
  node.dataset.role = role;
  node.querySelector(".message-speaker").textContent = `${SPEAKERS[role] ?? role}: `;
}

export function setText(node, text) {
  node.querySelector(".message-text").textContent = text;
}

// Cards are drawn again only when they change, not with every token: a shopper may be reading
// one with its details open while the text streams in above.
export function setCards(node, results) {
  if (node.shownCards === results) return;
  node.shownCards = results;
  node.querySelector(".message-cards").replaceChildren(cardList(results) ?? "");
}

export function setMeta(node, ...content) {
  const meta = node.querySelector(".message-meta");
  meta.replaceChildren(...content);
  meta.hidden = content.length === 0;
}
