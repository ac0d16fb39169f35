// The list of apps (GET /v1/apps), each linking to its chat page.
import { api, el } from "/common.js";

const list = document.querySelector("[data-testid=apps]");
const status = document.querySelector("[data-testid=apps-status]");

async function load() {
  try {
    const { data } = await api("/v1/apps");
    const apps = Array.isArray(data?.apps) ? data.apps : [];
    list.replaceChildren(...apps.map(appCard));
    status.textContent = apps.length === 0 ? "No apps are configured on this server." : "";
    status.hidden = apps.length !== 0;
  } catch (error) {
    status.textContent = `Couldn't load the apps: ${error.message}`;
    status.classList.add("is-error");
    list.replaceChildren();
    status.append(" ", el("button", { type: "button", class: "button-quiet", onclick: load },
                          "Try again"));
  }
}

function appCard(app) {
  const href = `/apps/${encodeURIComponent(app.name)}`;
  const title = app.title || app.name;
  return el("li", { class: "app-card", dataset: { testid: "app", app: app.name } },
    el("h2", {}, title),
    app.description ? el("p", {}, app.description) : null,
    app.requires_api_key ? el("p", { class: "badge" }, "Needs an API key") : null,
    el("a", { href, class: "button", dataset: { testid: "app-link" } },
       "Start a conversation", el("span", { class: "visually-hidden" }, ` with ${title}`)));
}

load();
