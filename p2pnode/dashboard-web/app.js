// Sporemind dashboard: a client of the local JSON API (p2pnode/dashboard.py says why
// it is built this way). Every text from the API is hostile (peers write memories):
// it reaches the page only as text nodes (append(string), textContent), never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "sporemind.api-token";
  const POLL_MS = 3000;           // /v1/status, for the charts
  const SLOW_EVERY = 4;           // peers, members and agents: every 4th poll
  const HISTORY = 60;             // samples kept: 3 minutes at 3 s
  const SMOOTH = 5;               // a counter's rate is taken over 5 samples (15 s): rounds are bursty
  const PAGE = 50;                // memories per page
  const CONFIRM_MS = 5000;        // a forget button waits this long for its second click
  const SVG = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const state = {
    me: "",                       // this spore's public key (its own memories are forgettable everywhere)
    memories: [], offset: 0, more: false,
    history: [], polls: 0, timer: 0, polling: false,
  };

  // -- building the page: text only ------------------------------------------------
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, String(value));  // an attribute value is never parsed as HTML
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const short = (hex) => (typeof hex === "string" && hex.length > 12 ? hex.slice(0, 12) + "…" : String(hex || "—"));
  const idTag = (hex) => el("code", { class: "id", title: String(hex) }, short(hex));
  const badge = (text, kind) => el("span", { class: "badge " + (kind || "") }, text);
  const num = (x, digits) => (typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "—");
  const when = (ms) => (typeof ms === "number" ? new Date(ms).toLocaleString() : "—");
  const ago = (s) => (typeof s === "number" ? (s < 90 ? `${Math.round(s)} s ago` : `${Math.round(s / 60)} min ago`) : "never");

  function table(id, head, rows, empty) {
    const node = $(id);
    if (!rows.length) {
      node.replaceChildren(el("tbody", {}, el("tr", {}, el("td", { class: "muted" }, empty))));
      return;
    }
    node.replaceChildren(
      el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h)))),
      el("tbody", {}, ...rows.map((cells) => el("tr", {}, ...cells.map((c) => el("td", {}, c))))));
  }

  function showError(message) {
    const node = $("error");
    node.textContent = message;
    node.hidden = false;
  }

  function clearError() {
    $("error").hidden = true;
  }

  // -- the API ------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";

  function showTokenState() {
    const has = token() !== "";
    $("token-state").textContent = has ? "token set (this tab)" : "no token";
    $("token-clear").hidden = !has;
  }

  function askForToken(why) {
    $("token-why").textContent = why;
    $("token-form").hidden = false;
    $("token-input").focus();
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    const init = { method, headers, cache: "no-store", credentials: "omit", redirect: "error" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";  // the gate takes JSON bodies only
      init.body = JSON.stringify(body);
    }
    if (token()) headers.Authorization = "Bearer " + token();
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (exc) {
      throw new ApiError(0, "the daemon does not answer (is it running?)");
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (exc) {
      data = null;
    }
    const said = data && typeof data.error === "string" ? data.error : `HTTP ${resp.status}`;
    if (resp.status === 401) {
      askForToken(said);
      throw new ApiError(401, "the API token is needed: paste it above, then try again");
    }
    if (!resp.ok) throw new ApiError(resp.status, said);
    return data;
  }

  async function guarded(what, work) {
    try {
      await work();
    } catch (exc) {
      showError(`${what}: ${exc instanceof Error ? exc.message : String(exc)}`);
    }
  }

  // -- ask and rate ------------------------------------------------------------------------
  async function onAsk(event) {
    event.preventDefault();
    const question = $("ask-input").value.trim();
    if (!question) return;
    const button = $("ask-button");
    button.disabled = true;
    $("answer").replaceChildren(el("p", { class: "muted" }, "asking…"));
    await guarded("ask", async () => {
      renderAnswer(await api("POST", "/v1/ask", { question, top: 5 }));
      clearError();
    });
    button.disabled = false;
  }

  function renderAnswer(r) {
    let head;
    if (r.abstained) {
      head = el("p", { class: "answer abstained", id: "answer-text" }, "I don't know.",
        el("span", { class: "muted" }, " Nothing held is near this question; the nearest memories are shown as maybe."));
    } else if (r.answer === null) {
      head = el("p", { class: "answer abstained", id: "answer-text" }, "Nothing is held yet: teach the swarm first.");
    } else {
      head = el("p", { class: "answer", id: "answer-text" }, r.answer);
    }
    const meta = el("p", { class: "muted" },
      `confidence ${num(r.confidence * 100, 0)} % · ${r.memories_searched} memories searched · agents' weight ${num(r.agents_weight, 2)}`);
    const first = r.sources.length ? r.sources[0] : null;
    const rating = r.answer_id && first ? rateBox(r, first) : null;
    $("answer").replaceChildren(head, meta, rating,
      el("h3", {}, r.abstained ? "Maybe" : "Sources"),
      el("ol", { class: "sources", id: "sources" }, ...r.sources.map(sourceItem)));
  }

  function rateBox(r, first) {
    const result = el("span", { class: "muted", id: "rate-result" },
      r.abstained ? "Is the first maybe right? An up vote makes it known for this question." : "");
    const vote = (up) => guarded("rate", async () => {
      const out = await api("POST", "/v1/rate", { answer_id: r.answer_id, vote: up ? "up" : "down" });
      result.textContent = `counted: ${out.up} up, ${out.down} down on ${short(out.memory_id)} (fitness ${num(out.fitness, 2)}, ${out.agents_rated} agents rated)`;
      result.className = "counted";
      clearError();
    });
    return el("div", { class: "rate" },
      el("button", { type: "button", id: "rate-up", class: "up", onclick: () => vote(true),
        title: "rate the answer (its first source) right for this question" }, "▲ Right"),
      el("button", { type: "button", id: "rate-down", class: "down", onclick: () => vote(false),
        title: "rate the answer wrong for this question" }, "▼ Wrong"),
      el("code", { class: "id", title: "answer id" }, r.answer_id), " ", result);
  }

  function sourceItem(s) {
    const member = s.author_membership || {};
    return el("li", { class: "source" + (s.maybe ? " maybe" : "") },
      el("div", { class: "text" }, s.text),
      s.question ? el("div", { class: "question" }, "Q: ", s.question) : null,
      el("div", { class: "meta" },
        s.maybe ? badge("maybe", "maybe") : null,
        s.rejected ? badge("rated down for this question", "bad") : null,
        s.remote ? badge("from the swarm") : null,
        s.revoked_author ? badge("revoked author", "bad") : null,
        `score ${num(s.score, 3)}`,
        typeof s.agents === "number" ? ` · agents ${num(s.agents, 3)}` : "",
        ` · ${s.origin} · by `, idTag(s.author),
        member.kind ? ` (${member.kind}, trust ${num(member.trust, 2)})` : "",
        ` · ${when(s.created_ms)} · `, idTag(s.id)));
  }

  // -- memories ----------------------------------------------------------------------------
  async function loadMemories(reset) {
    await guarded("memories", async () => {
      const offset = reset ? 0 : state.offset;
      const page = await api("GET", `/v1/memories?limit=${PAGE}&offset=${offset}`);
      state.memories = reset ? page.memories : state.memories.concat(page.memories);
      state.offset = offset + page.memories.length;
      state.more = page.memories.length === PAGE;
      renderMemories();
    });
  }

  function matches(m, needle) {
    if (!needle) return true;
    return [m.text, m.question, m.origin, m.id].some((f) => String(f).toLowerCase().includes(needle));
  }

  function renderMemories() {
    const needle = $("memories-filter").value.trim().toLowerCase();
    const shown = state.memories.filter((m) => matches(m, needle));
    $("memories").replaceChildren(...shown.map(memoryItem));
    $("memories-count").textContent = `${shown.length} shown of ${state.memories.length} loaded`;
    $("memories-more").hidden = !state.more;
  }

  function memoryItem(m) {
    const mine = m.author === state.me;
    const meta = el("div", { class: "meta" }, `${m.origin} · by `, idTag(m.author),
      mine ? " (this spore)" : "", ` · ${when(m.created_ms)} · `, idTag(m.id), " ");
    const item = el("li", { class: "memory", "data-id": m.id },
      el("div", { class: "text" }, m.text),
      m.question ? el("div", { class: "question" }, "Q: ", m.question) : null, meta);
    meta.append(forgetButton(m, mine, item));
    return item;
  }

  function forgetButton(m, mine, item) {
    const label = mine ? "Forget everywhere" : "Hide here";
    const button = el("button", { type: "button", class: "forget",
      title: mine ? "a signed tombstone: every spore drops it" : "another spore's memory: hidden on this spore only" }, label);
    let armed = 0;
    button.addEventListener("click", () => {
      if (!armed) {  // two clicks, no modal dialog: a stray click forgets nothing
        button.textContent = "Really? Click again";
        button.classList.add("armed");
        armed = setTimeout(() => { armed = 0; button.textContent = label; button.classList.remove("armed"); }, CONFIRM_MS);
        return;
      }
      clearTimeout(armed);
      armed = 0;
      button.disabled = true;
      guarded("forget", async () => {
        const out = await api("POST", "/v1/forget", { memory_id: m.id });
        state.memories = state.memories.filter((x) => x.id !== m.id);
        $("memories-count").textContent = `${state.memories.length} loaded`;
        item.replaceChildren(el("div", { class: "muted" }, `forgotten ${out.forgotten === "everywhere" ? "everywhere" : "here"}: `, idTag(m.id)));
        clearError();
      }).finally(() => { button.disabled = false; });
    });
    return button;
  }

  // -- peers, members, agents --------------------------------------------------------------
  async function loadPeers() {
    const p = await api("GET", "/v1/peers");
    table("contacts", ["node", "address", "health", "last heard"], p.peers.map((c) => [
      idTag(c.node_id), c.address, c.alive ? badge("alive", "good") : badge("not heard", "bad"), ago(c.last_seen_s)]),
      "no DHT contact (alone, or no peer configured)");
    table("gossip", ["peer", "state", "failures", "answered", "reason"], p.gossip.map((g) => [
      `${g.host}:${g.port}`, badge(g.state, g.state === "alive" ? "good" : "bad"), String(g.failures),
      typeof g.last_ok_s === "number" ? "yes" : "never", g.reason || ""]), "no gossip peer");
    const refused = Object.entries(p.refused).map(([who, r]) => [who, "gossip", r.reason, r.detail])
      .concat(Object.entries(p.dht_refused).map(([who, why]) => [who, "DHT", why, ""]));
    table("refused", ["peer", "by", "reason", "detail"], refused, "none refused");
  }

  async function loadMembers() {
    const m = await api("GET", "/v1/members");
    $("membership").textContent = `(${m.membership} swarm, ${m.members.length} known)`;
    table("members", ["node", "kind", "standing", "trust", "since", "may invite"], m.members.map((x) => [
      idTag(x.node_id), x.kind, badge(x.standing + (x.why ? `: ${x.why}` : ""), x.revoked ? "bad" : "good"),
      num(x.trust, 2), when(x.since_ms), x.may_invite ? "yes" : "no"]), "no member known");
  }

  function lineage(registry, children) {
    const byId = new Map(registry.map((card) => [card.id, card]));
    const node = (card, depth) => el("li", { class: card.alive ? "alive" : "dead" },
      el("span", { class: "agent" }, idTag(card.id),
        ` gen ${card.generation} · fitness ${num(card.fitness, 3)} · ${card.interactions} interactions · on `,
        idTag(card.host), card.here ? badge("here", "good") : null, card.alive ? null : badge("dead", "bad")),
      depth < 64 && (children[card.id] || []).length
        ? el("ul", {}, ...(children[card.id] || []).filter((id) => byId.has(id)).map((id) => node(byId.get(id), depth + 1)))
        : null);
    const roots = registry.filter((card) => !card.parent || !byId.has(card.parent));
    return roots.map((card) => node(card, 0));
  }

  async function loadAgents() {
    let a;
    try {
      a = await api("GET", "/v1/agents");
    } catch (exc) {
      if (exc instanceof ApiError && exc.status === 400) {  // this spore runs no agents
        $("lineage").replaceChildren(el("li", { class: "muted" }, exc.message));
        return;
      }
      throw exc;
    }
    $("agents-count").textContent = `(${a.here.length} here, ${a.registry.length} in the swarm's registry)`;
    const tree = lineage(a.registry, a.children);
    $("lineage").replaceChildren(...(tree.length ? tree : [el("li", { class: "muted" }, "no agent registered")]));
    $("agent-events").replaceChildren(...a.events.slice(-12).reverse().map((e) => el("li", {},
      `${when(e.at_ms)} · ${e.event} · `, idTag(e.agent), ` gen ${e.generation}`,
      e.parent ? " · parent " : "", e.parent ? idTag(e.parent) : null)));
  }

  // -- counters over time ------------------------------------------------------------------
  const sum = (counters, test) => Object.entries(counters || {})
    .reduce((total, [key, n]) => total + (test(key) && typeof n === "number" ? n : 0), 0);

  // rate: a counter, drawn per second; else a level drawn as it is
  const SERIES = [
    { label: "gossip rounds", rate: true, get: (s) => sum(s.gossip && s.gossip.counters, (k) => k === "rounds") },
    { label: "gossip failed rounds", rate: true, get: (s) => sum(s.gossip && s.gossip.counters, (k) => k === "failed_rounds") },
    { label: "gossip items accepted", rate: true, get: (s) => sum(s.gossip && s.gossip.counters, (k) => k === "accepted") },
    { label: "gossip bytes", rate: true, get: (s) => sum(s.gossip && s.gossip.counters, (k) => k === "bytes_sent" || k === "bytes_received") },
    { label: "DHT datagrams", rate: true, get: (s) => sum(s.dht && s.dht.counters, (k) => k === "datagrams") },
    { label: "DHT RPCs sent", rate: true, get: (s) => sum(s.dht && s.dht.counters, (k) => k.startsWith("rpc_sent_")) },
    { label: "DHT RPCs served", rate: true, get: (s) => sum(s.dht && s.dht.counters, (k) => k.startsWith("rpc_served_")) },
    { label: "DHT timeouts", rate: true, get: (s) => sum(s.dht && s.dht.counters, (k) => k === "timeouts") },
    { label: "DHT contacts", rate: false, get: (s) => (s.dht ? s.dht.contacts : 0) },
    { label: "asks", rate: true, get: (s) => sum(s.counters, (k) => k === "asks") },
    { label: "memories", rate: false, get: (s) => s.memories },
    { label: "resident MB", rate: false, get: (s) => s.rss_mb },
  ];

  function record(status) {
    state.history.push({ t: performance.now() / 1000, values: SERIES.map((x) => Number(x.get(status)) || 0) });
    if (state.history.length > HISTORY) state.history.shift();
  }

  function points(i) {
    const h = state.history;
    if (!SERIES[i].rate) return h.map((s) => s.values[i]);
    const out = [];
    for (let k = 1; k < h.length; k++) {
      const from = h[Math.max(0, k - SMOOTH)], dt = h[k].t - from.t;
      out.push(dt > 0 ? Math.max(0, h[k].values[i] - from.values[i]) / dt : 0);
    }
    return out;
  }

  function chart(i) {
    const w = 220, hgt = 44, values = points(i);
    const top = Math.max(...values, 1e-9);
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("viewBox", `0 0 ${w} ${hgt}`);
    svg.setAttribute("class", "spark");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", SERIES[i].label);
    if (values.length > 1) {
      const step = w / (HISTORY - 1);
      const x0 = w - (values.length - 1) * step;
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", values.map((v, k) =>
        `${(x0 + k * step).toFixed(1)},${(hgt - 2 - (v / top) * (hgt - 4)).toFixed(1)}`).join(" "));
      svg.append(line);
    }
    const now = values.length ? values[values.length - 1] : NaN;
    const shown = SERIES[i].rate ? `${num(now, now < 10 ? 2 : 0)}/s` : num(now, Number.isInteger(now) ? 0 : 1);
    return el("figure", { class: "chart", "data-series": SERIES[i].label },
      el("figcaption", {}, SERIES[i].label, el("b", {}, shown)), svg);
  }

  function renderCharts() {
    $("charts").replaceChildren(...SERIES.map((_, i) => chart(i)));
  }

  function renderNode(s) {
    state.me = s.public_key;
    const listen = s.dht && s.dht.listen ? `${s.dht.dht_address} (${s.dht.listen.loopback_only ? "loopback only" : "open"})` : "—";
    const facts = [["swarm", s.swarm], ["node", idTag(s.node_id)], ["memories", s.memories],
      ["votes", s.votes], ["DHT and peer port", listen], ["up", ago(s.uptime_s).replace(" ago", "")]];
    $("node").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  }

  async function poll() {
    clearTimeout(state.timer);
    if (state.polling) return;  // one at a time (a tab shown again, a token pasted)
    state.polling = true;
    try {
      const status = await api("GET", "/v1/status");
      renderNode(status);
      record(status);
      renderCharts();
      if (state.polls++ % SLOW_EVERY === 0) await Promise.all([loadPeers(), loadMembers(), loadAgents()]);
    } catch (exc) {
      showError(`status: ${exc.message}`);
    } finally {
      state.polling = false;
    }
    if (document.visibilityState !== "hidden") state.timer = setTimeout(poll, POLL_MS);
  }

  // -- wiring ------------------------------------------------------------------------------
  function start() {
    showTokenState();
    $("ask-form").addEventListener("submit", onAsk);
    $("memories-form").addEventListener("submit", (e) => e.preventDefault());
    $("memories-filter").addEventListener("input", renderMemories);
    $("memories-refresh").addEventListener("click", () => loadMemories(true));
    $("memories-more").addEventListener("click", () => loadMemories(false));
    $("token-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const value = $("token-input").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      $("token-input").value = "";
      $("token-form").hidden = true;
      showTokenState();
      clearError();
      loadMemories(true);
      poll();
    });
    $("token-clear").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      showTokenState();
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") poll();  // paused while hidden
    });
    poll().then(() => loadMemories(true));
  }

  start();
})();
