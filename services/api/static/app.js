// Conveyor dashboard: environments, live events, a commit's trace, an environment's history.
// Plain DOM, no framework. Every piece of data reaches the page as a text node or an
// attribute value: nothing from the API is ever parsed as HTML.
"use strict";

(() => {
  const MAX_EVENTS = 100;
  const HISTORY_ROWS = 100;
  const SHA = /^[0-9a-f]{4,40}$/i;
  const ENV = /^[A-Za-z0-9_-]{1,64}$/;
  const BAD = /\.(failed|dead|rejected|invalid|degraded|fetch_failed|branch_deleted)$/;
  const WARN = /\.(retrying|superseded|progressing|rewritten)$|^conveyor\.drift\./;
  const GOOD = /\.(succeeded|healthy|sent|detected|skipped|recovered|loaded)$/;

  const state = {envs: new Map(), events: [], seen: new Set(), lastSeq: 0, route: null,
    stream: null, retryMs: 2000, renderPending: false,
    cards: new Map(), shown: 0, envSeq: 0, changed: new Map(), flushPending: false,
    incoming: [], incomingPending: false};
  const $ = (id) => document.getElementById(id);

  // -- small helpers -------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") el.className = value;
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  const count = (n, noun) => `${n || 0} ${noun}${n === 1 ? "" : "s"}`;
  const short = (sha) => (sha ? String(sha).slice(0, 7) : "");
  const label = (type) => String(type || "").replace(/^conveyor\./, "");
  const tone = (type) => (BAD.test(type) ? "bad" : WARN.test(type) ? "warn"
    : GOOD.test(type) ? "good" : "info");

  function ago(iso) {
    const t = Date.parse(iso);
    if (Number.isNaN(t)) return "";
    const s = Math.max(0, Math.round((Date.now() - t) / 1000));
    if (s < 2) return "just now";
    if (s < 60) return `${s}s ago`;
    if (s < 3600) return `${Math.floor(s / 60)}m ago`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
    return `${Math.floor(s / 86400)}d ago`;
  }

  function duration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(Number(ms))) return "";
    const n = Number(ms);
    if (n < 1000) return `${Math.round(n)} ms`;
    if (n < 60000) return `${(n / 1000).toFixed(1)} s`;
    return `${Math.floor(n / 60000)}m ${Math.round((n % 60000) / 1000)}s`;
  }

  const timeAgo = (iso) => (iso ? h("time", {datetime: iso, title: iso, class: "ago"}, ago(iso))
    : "");
  const commitLink = (sha) => (sha ? h("a", {href: `#/commit/${encodeURIComponent(sha)}`,
    class: "rev", title: sha}, short(sha)) : h("span", {class: "none"}, "none"));
  const envLink = (name) => h("a", {href: `#/env/${encodeURIComponent(name)}`}, name);
  const outcome = (type) => h("span", {class: `outcome ${tone(type)}`, "data-type": type},
    label(type) || "none");

  // -- the token ----------------------------------------------------------------------------
  // With a token configured on the api, every /api/v1 request needs it. The page keeps it for
  // this browser tab only (sessionStorage: gone when the tab closes, never sent by the browser
  // on its own, so no other site can make the page act with it) and sends it as a header on
  // every fetch, the live stream included (a fetch stream, because EventSource sets no headers).
  const TOKEN_KEY = "conveyor.token";
  const storedToken = () => sessionStorage.getItem(TOKEN_KEY) || "";

  function authHeaders(extra) {
    const headers = Object.assign({}, extra || {});
    const token = storedToken();
    if (token) headers.Authorization = `Bearer ${token}`;
    return headers;
  }

  async function getJSON(path) {
    const resp = await fetch(path, {headers: authHeaders({Accept: "application/json"})});
    if (resp.status === 401) showLogin(storedToken() ? "That token was not accepted." : "");
    if (!resp.ok) {
      const err = new Error(`${path}: HTTP ${resp.status}`);
      err.status = resp.status;
      throw err;
    }
    return resp.json();
  }

  function showLogin(message) {
    $("login").hidden = false;
    $("main").hidden = true;
    $("login-error").textContent = message || "";
    $("sign-out").hidden = !storedToken();
    setConnection("down", "Signed out");
    $("login-token").focus();
  }

  function signIn(token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    $("login").hidden = true;
    $("main").hidden = false;
    $("sign-out").hidden = false;
    loadEnvs().finally(connect);
    render(false);
  }

  function signOut() {
    sessionStorage.removeItem(TOKEN_KEY);
    state.envs.clear();
    state.envSeq = 0;
    renderCards();
    if (state.stream) state.stream.abort();
    showLogin("");
  }

  function summary(event) {
    const d = event.data || {};
    return String(d.error || d.summary || d.message || (d.superseded_by
      ? `superseded by ${short(d.superseded_by)}` : "") || d.route || d.status || "");
  }

  function debounce(fn, ms) {
    let timer = null;
    return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
  }

  // -- environment cards ---------------------------------------------------------------------
  function syncStatus(env) {
    if (!env.desired_revision) return ["Waiting for a commit", "info"];
    if (env.last_applied_revision === env.desired_revision && !env.in_flight) {
      return ["In sync", "good"];
    }
    if (env.in_flight) return [`Rolling out: ${env.in_flight}`, "warn"];
    if (BAD.test(env.last_outcome || "")) return ["Failed: desired is not applied", "bad"];
    return ["Behind", "warn"];
  }

  function card(env, where = "list") {
    const [sync, syncTone] = syncStatus(env);
    const health = String(env.health || "Unknown");
    const titleId = `card-${where}-${env.name}`;
    const rows = [
      ["Desired", commitLink(env.desired_revision), "desired"],
      ["Applied", [commitLink(env.last_applied_revision), " ",
        timeAgo(env.last_applied_at)], "applied"],
      ["Last outcome", [outcome(env.last_outcome), " ", timeAgo(env.last_outcome_at)],
        "outcome"],
    ];
    return h("li", {class: "card", "data-env": env.name, "data-seq": env.last_seq},
      h("article", {"aria-labelledby": titleId},
        h("header", {class: "card-head"},
          h("h2", {id: titleId}, envLink(env.name)),
          h("span", {class: `badge health-${health.toLowerCase()}`, "data-field": "health"},
            h("span", {class: "visually-hidden"}, "Health: "), health)),
        h("p", {class: `sync ${syncTone}`, "data-field": "sync"}, sync),
        h("dl", {class: "facts"}, rows.map(([term, value, field]) =>
          h("div", {"data-field": field}, h("dt", {}, term), h("dd", {}, value)))),
        env.last_error ? h("p", {class: "error", "data-field": "error"}, env.last_error) : null,
        h("p", {class: "counts"}, [count(env.deployments, "deployment"),
          count(env.failures, "failure"), count(env.commits_seen, "commit")].join(" · "))));
  }

  // At fleet size (1,000 environments) every change must cost O(1) or one linear pass: a
  // card is replaced in place when it is on screen, and anything else (a new environment, a
  // filter, a regroup) schedules one render of the whole list per animation frame.
  const outcomeOf = (env) => (env.last_outcome ? env.last_outcome.split(".").pop() : "none");
  const GROUP = {health: (e) => String(e.health || "Unknown"), outcome: outcomeOf,
    generator: (e) => e.generator || "written by hand"};

  function filters() {
    return {q: $("env-search").value.trim().toLowerCase(), health: $("env-health").value,
      outcome: $("env-outcome").value, group: $("env-group").value};
  }

  function selected(env, f) {
    return (!f.q || env.name.toLowerCase().includes(f.q))
      && (!f.health || String(env.health || "Unknown") === f.health)
      && (!f.outcome || outcomeOf(env) === f.outcome);
  }

  function renderCounts() {
    const health = {};
    for (const env of state.envs.values()) {
      const key = String(env.health || "Unknown");
      health[key] = (health[key] || 0) + 1;
    }
    const parts = Object.keys(health).sort().map((k) => `${health[k]} ${k}`);
    const total = state.envs.size;
    $("env-counts").textContent = total ? `${state.shown} of ${total} environments`
      + (parts.length ? ` · ${parts.join(" · ")}` : "") : "";
  }

  // One pass over every environment: the only place cards are built in bulk. ``state.cards``
  // indexes the cards on the list by name, so a live update finds its card without a search.
  function renderCards() {
    state.renderPending = false;
    state.changed.clear();  // this render shows every change
    const f = filters();
    const all = [...state.envs.values()].sort((a, b) => a.name.localeCompare(b.name));
    const envs = all.filter((env) => selected(env, f));
    const groups = new Map();
    for (const env of envs) {
      const key = f.group ? GROUP[f.group](env) : "";
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(env);
    }
    const cards = new Map();
    const keys = [...groups.keys()].sort();
    $("env-cards").replaceChildren(...keys.flatMap((key) => [
      key ? h("h3", {}, `${key} (${groups.get(key).length})`) : null,
      h("ul", {class: "cards", "aria-label": key || "Environments"},
        groups.get(key).map((env) => {
          const li = card(env);
          cards.set(env.name, li);
          return li;
        })),
    ].filter(Boolean)));
    state.cards = cards;
    state.shown = envs.length;
    renderCounts();
    $("envs-empty").hidden = all.length > 0;
  }

  function scheduleRender() {
    if (state.renderPending) return;
    state.renderPending = true;
    requestAnimationFrame(renderCards);
  }

  // Live updates are batched: each frame applies every change that arrived since the last,
  // replacing the changed cards in place (one lookup each) and counting once; only a card
  // that appears, disappears or changes group costs a render of the list.
  function updateEnv(env) {
    const known = state.envs.get(env.name);
    if (known && (known.last_seq || 0) > (env.last_seq || 0)) return;
    state.envSeq = Math.max(state.envSeq, env.last_seq || 0);
    if (!state.changed.has(env.name)) state.changed.set(env.name, known);  // as its card shows
    state.envs.set(env.name, env);
    if (!state.flushPending) {
      state.flushPending = true;
      requestAnimationFrame(flushEnvs);
    }
  }

  function flushEnvs() {
    state.flushPending = false;
    const route = state.route;
    if (route && route.view === "env" && state.changed.has(route.name)) {
      $("env-card").replaceChildren(card(state.envs.get(route.name), "detail"));
    }
    if (state.renderPending) return;  // the render it waits for shows every change
    const f = filters();
    let regroup = false;
    for (const [name, before] of state.changed) {
      const env = state.envs.get(name);
      const existing = state.cards.get(name);
      const shown = selected(env, f);
      const sameGroup = before && (!f.group || GROUP[f.group](before) === GROUP[f.group](env));
      if (existing && shown && sameGroup) {
        const li = card(env);
        existing.replaceWith(li);
        state.cards.set(name, li);
      } else if (existing || shown) {
        regroup = true;
        break;
      }
    }
    state.changed.clear();
    if (regroup) renderCards();
    else renderCounts();
  }

  async function loadEnvs() {
    try {
      let path = "/api/v1/environments?limit=1000";
      for (;;) {  // follow the pages: one request per thousand environments
        const body = await getJSON(path);
        for (const env of body.environments || []) {
          const known = state.envs.get(env.name);
          if (!known || (known.last_seq || 0) <= (env.last_seq || 0)) state.envs.set(env.name, env);
        }
        // the live stream sends the environments that change after this point
        state.envSeq = Math.max(state.envSeq, body.position || 0);
        if (!body.continue) break;
        path = `/api/v1/environments?limit=1000&continue=${encodeURIComponent(body.continue)}`;
      }
      renderCards();
    } catch (err) {
      $("envs-empty").hidden = false;
      $("envs-empty").textContent = `Could not load environments (${err.message}).`;
    }
  }

  // -- live event stream ---------------------------------------------------------------------
  function eventItem(e) {
    const text = summary(e);
    return h("li", {class: `event ${tone(e.type)}`, "data-seq": e.sequence, "data-type": e.type,
      "data-env": e.subject, "data-revision": e.correlationid},
      h("div", {class: "event-head"},
        outcome(e.type),
        e.subject && e.subject !== "_" ? h("span", {class: "env"}, envLink(e.subject)) : null,
        e.correlationid ? commitLink(e.correlationid) : null,
        timeAgo(e.time)),
      text ? h("p", {class: "event-text"}, text) : null);
  }

  function addEvent(e) {
    if (state.seen.has(e.sequence)) return;
    state.seen.add(e.sequence);
    state.lastSeq = Math.max(state.lastSeq, e.sequence);
    state.events.push(e);
    state.incoming.push(e);  // (a hidden tab runs no frames: keep only what could be shown)
    if (state.incoming.length > MAX_EVENTS * 2) state.incoming = state.incoming.slice(-MAX_EVENTS);
    if (state.events.length > MAX_EVENTS * 2) {
      state.events = state.events.slice(-MAX_EVENTS);
      state.seen = new Set(state.events.map((x) => x.sequence));
    }
    if (!state.incomingPending) {
      state.incomingPending = true;
      requestAnimationFrame(flushEvents);
    }
    onLiveEvent(e);
  }

  // The stream's items are added once per frame: during a rollout of a thousand environments
  // events arrive by the hundred a second, and only the newest MAX_EVENTS are ever shown.
  function flushEvents() {
    state.incomingPending = false;
    const newest = state.incoming.slice(-MAX_EVENTS).reverse();
    state.incoming = [];
    const list = $("event-stream");
    list.prepend(...newest.map(eventItem));
    while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
    $("stream-empty").hidden = true;
  }

  function setConnection(kind, text) {
    const el = $("connection");
    el.dataset.state = kind;
    el.textContent = text;
  }

  // Server-Sent Events read through fetch: the same wire format EventSource reads, but with
  // the Authorization header. One stream at a time; after it ends the page reconnects after
  // the server's `retry:` and resumes after the last sequence it saw.
  function dispatch(block) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") name = value;
      else if (field === "data") data.push(value);
      else if (field === "retry" && /^\d+$/.test(value)) state.retryMs = Number(value);
    }
    if (!data.length) return;
    const body = JSON.parse(data.join("\n"));
    if (name === "log") addEvent(body);
    else if (name === "env") updateEnv(body);
  }

  async function connect() {
    if (state.stream) state.stream.abort();
    const controller = new AbortController();
    state.stream = controller;
    const url = (state.lastSeq ? `/api/v1/dashboard/stream?after=${state.lastSeq}`
      : "/api/v1/dashboard/stream?last=50") + `&envs_after=${state.envSeq}`;
    let resp;
    try {
      resp = await fetch(url, {headers: authHeaders({Accept: "text/event-stream"}),
        cache: "no-store", signal: controller.signal});
    } catch (err) {
      if (controller.signal.aborted) return;
      resp = null;
    }
    if (resp && resp.status === 401) {
      showLogin(storedToken() ? "That token was not accepted." : "");
      return;
    }
    if (!resp || !resp.ok || !resp.body) {
      setConnection("down", "Disconnected, retrying…");
      setTimeout(() => { if (state.stream === controller) connect(); }, 5000);
      return;
    }
    setConnection("live", "Live");
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          dispatch(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    if (state.stream !== controller) return;
    setConnection("connecting", "Reconnecting…");
    setTimeout(() => { if (state.stream === controller) connect(); }, state.retryMs);
  }

  // -- commit view ---------------------------------------------------------------------------
  function node(n) {
    const text = n.summary || "";
    return h("li", {class: `node ${tone(n.type)}`, "data-type": n.type, "data-env": n.env},
      h("div", {class: "node-head"},
        outcome(n.type),
        n.env && n.env !== "_" ? h("span", {class: "env"}, envLink(n.env)) : null,
        n.latency_ms === null || n.latency_ms === undefined ? null
          : h("span", {class: "latency", title: "time since the event that caused it"},
            `+${duration(n.latency_ms)}`),
        timeAgo(n.time)),
      text ? h("p", {class: "node-text"}, text) : null,
      n.children && n.children.length ? h("ol", {}, n.children.map(node)) : null);
  }

  function stagesOf(events, env) {
    // the chain of one environment, each stage with the latency from its cause
    const byId = new Map(events.map((e) => [e.id, e]));
    return events.filter((e) => e.subject === env).map((e) => {
      const cause = byId.get(e.causationid);
      const ms = cause ? Date.parse(e.time) - Date.parse(cause.time) : null;
      return {type: e.type, ms};
    });
  }

  function stageBars(stages) {
    const total = stages.reduce((sum, s) => sum + (s.ms || 0), 0) || 1;
    return h("ol", {class: "stages"}, stages.map((s) => {
      const bar = h("span", {class: `bar ${tone(s.type)}`, "aria-hidden": "true"});
      bar.style.setProperty("--w", `${Math.max(2, (100 * (s.ms || 0)) / total)}%`);
      return h("li", {"data-type": s.type}, h("span", {class: "stage-name"}, label(s.type)),
        bar, h("span", {class: "stage-ms"}, s.ms === null ? "start" : duration(s.ms)));
    }));
  }

  async function renderCommit(sha) {
    $("commit-title").textContent = `Commit ${short(sha)}`;
    const status = $("commit-status");
    let body;
    try {
      body = await getJSON(`/api/v1/trace/${encodeURIComponent(sha)}`);
    } catch (err) {
      status.textContent = `Could not load the trace (${err.message}).`;
      return;
    }
    if (!state.route || state.route.view !== "commit" || state.route.sha !== sha) return;
    const events = body.events || [];
    const detected = events.find((e) => e.type === "conveyor.commit.detected");
    const full = (detected && detected.correlationid) || (events[0] && events[0].correlationid);
    if (full) $("commit-title").textContent = `Commit ${short(full)}`;
    const d = (detected && detected.data) || {};
    $("commit-meta").replaceChildren(...(detected ? [
      h("span", {class: "message"}, d.message || ""), " ",
      h("span", {class: "author"}, d.author ? `by ${d.author}` : ""), " ",
      h("code", {title: full}, full || ""), " ", timeAgo(detected.time)] : []));
    status.textContent = events.length ? `${events.length} events`
      : "No events for this commit yet: they appear here as Conveyor handles it.";
    const envs = Object.keys(body.end_to_end_ms || {}).sort();
    $("commit-e2e").tBodies[0].replaceChildren(...envs.map((env) => {
      const mine = events.filter((e) => e.subject === env);
      const last = mine[mine.length - 1];
      return h("tr", {"data-env": env},
        h("th", {scope: "row"}, envLink(env)),
        h("td", {"data-label": "Stages"}, stageBars(stagesOf(events, env))),
        h("td", {class: "num", "data-label": "End to end"}, duration(body.end_to_end_ms[env])),
        h("td", {"data-label": "Outcome"}, last ? outcome(last.type) : ""));
    }));
    $("commit-tree").replaceChildren(...(body.tree || []).map(node));
  }

  // -- environment view ----------------------------------------------------------------------
  // One row per deployment attempt from /api/v1/environments/NAME/history when the api has it,
  // else one row per outcome event from /api/v1/events. Both become the same row shape, with
  // the history endpoint's outcome words: succeeded, skipped, failed, render-failed, ...
  const FAILED_OUTCOMES = new Set(["failed", "render-failed", "dead", "rejected"]);
  const EVENT_OUTCOMES = {
    "conveyor.apply.succeeded": "succeeded", "conveyor.apply.skipped": "skipped",
    "conveyor.apply.failed": "failed", "conveyor.apply.superseded": "superseded",
    "conveyor.apply.dead": "dead", "conveyor.render.failed": "render-failed",
    "conveyor.render.dead": "dead", "conveyor.commit.rejected": "rejected",
  };
  const OUTCOME_TONE = {succeeded: "good", skipped: "good", superseded: "warn",
    rendering: "info", applying: "info", retrying: "warn"};

  function rowFromAttempt(a) {
    return {when: a.finished_at || a.started_at, revision: a.revision, message: a.message,
      outcome: a.outcome, stage: a.stage, ms: a.duration_ms, health: a.health,
      detail: a.error || (a.superseded_by ? `superseded by ${short(a.superseded_by)}` : "")
        || (a.objects !== null && a.objects !== undefined ? count(a.objects, "object") : "")};
  }

  function rowFromEvent(e) {
    const d = e.data || {};
    return {when: e.time, revision: e.correlationid, message: d.message,
      outcome: EVENT_OUTCOMES[e.type], stage: e.type.split(".")[1], ms: d.duration_ms,
      detail: summary(e)};
  }

  async function historyRows(name) {
    const env = encodeURIComponent(name);
    try {
      const body = await getJSON(`/api/v1/environments/${env}/history?limit=${HISTORY_ROWS}`);
      if (Array.isArray(body.attempts)) return body.attempts.map(rowFromAttempt);
    } catch (err) {
      if (err.status !== 404 && err.status !== 405) throw err;
    }
    const queries = ["conveyor.apply", "conveyor.render.failed", "conveyor.render.dead",
      "conveyor.commit.rejected"].map((type) =>
      getJSON(`/api/v1/events?env=${env}&type=${encodeURIComponent(type)}`)
        .then((body) => body.events || []));
    const all = (await Promise.all(queries)).flat().filter((e) => e.type in EVENT_OUTCOMES);
    return all.sort((a, b) => b.sequence - a.sequence).slice(0, HISTORY_ROWS).map(rowFromEvent);
  }

  function historyRow(row) {
    const failed = FAILED_OUTCOMES.has(row.outcome);
    const badge = h("span", {class: `outcome ${failed ? "bad" : OUTCOME_TONE[row.outcome]
      || "info"}`}, String(row.outcome || "").replace("-", " "));
    return h("tr", {class: failed ? "failed" : null, "data-outcome": row.outcome,
      "data-stage": row.stage, "data-revision": row.revision},
      h("td", {"data-label": "When"}, timeAgo(row.when)),
      h("td", {"data-label": "Commit"}, commitLink(row.revision),
        row.message ? h("span", {class: "message"}, ` ${row.message}`) : null),
      h("td", {"data-label": "Outcome"}, failed ? h("strong", {}, badge) : badge,
        row.health ? h("span", {class: "health"}, ` ${row.health}`) : null),
      h("td", {class: "num", "data-label": "Duration"}, duration(row.ms)),
      h("td", {class: failed ? "error" : null, "data-label": "Detail"}, row.detail || ""));
  }

  async function renderEnv(name) {
    $("env-title").textContent = name;
    const env = state.envs.get(name);
    $("env-card").replaceChildren(...(env ? [card(env, "detail")] : []));
    const status = $("env-status");
    let rows;
    try {
      rows = await historyRows(name);
    } catch (err) {
      status.textContent = `Could not load the history (${err.message}).`;
      return;
    }
    if (!state.route || state.route.view !== "env" || state.route.name !== name) return;
    const failures = rows.filter((r) => FAILED_OUTCOMES.has(r.outcome)).length;
    status.textContent = rows.length
      ? `${count(rows.length, "deployment")}, ${count(failures, "failure")}`
      : "No deployments yet.";
    $("env-history").tBodies[0].replaceChildren(...rows.map(historyRow));
    renderObjects(name);
  }

  // An applied object's row, then the live objects it owns (from the kube applier's health
  // verdict: a Deployment's ReplicaSets, each with its Pods), indented under it.
  function objectRows(o, depth = 0, owner = null, namespace = "") {
    const health = String((depth ? o.status : o.health) || "Unknown");
    const ns = depth ? namespace : o.namespace;
    const row = h("tr", {class: depth ? `child depth-${Math.min(depth, 3)}` : null},
      h("td", {"data-label": "Kind"},
        depth ? h("span", {"aria-hidden": "true"}, "↳ ") : null,
        owner ? h("span", {class: "visually-hidden"}, `owned by ${owner.kind} ${owner.name}: `)
          : null, o.kind),
      h("td", {"data-label": "Namespace"}, ns || "(cluster)"),
      h("td", {"data-label": "Name"}, o.name),
      h("td", {"data-label": "Health", title: o.message || ""},
        h("span", {class: `badge health-${health.toLowerCase()}`}, health)));
    const kids = Array.isArray(o.children) ? o.children : [];
    return [row, ...kids.flatMap((c) => objectRows(c, depth + 1, o, ns))];
  }

  // What the environment runs, object by object, and what its last change changed: both
  // from the bundles the api already stores (identities only; Secret values never leave).
  async function renderObjects(name) {
    const here = () => state.route && state.route.view === "env" && state.route.name === name;
    try {
      const [objects, changes] = await Promise.all([
        getJSON(`/api/v1/environments/${encodeURIComponent(name)}/objects`),
        getJSON(`/api/v1/environments/${encodeURIComponent(name)}/changes`)]);
      if (!here()) return;
      const list = objects.objects || [];
      $("env-objects-status").textContent = list.length
        ? `${count(list.length, "object")} at ${short(objects.revision)}` : "Nothing applied yet.";
      $("env-objects").tBodies[0].replaceChildren(...list.flatMap((o) => objectRows(o)));
      const diffs = changes.objects || [];
      $("env-changes-status").textContent = changes.to
        ? (changes.from ? `${short(changes.from.revision)} → ${short(changes.to.revision)}: `
          : `first deployment, ${short(changes.to.revision)}: `) + (changes.summary || "")
            .split("\n")[0]
        : "No deployment yet.";
      $("env-changes").replaceChildren(...diffs.map((d) => h("li", {class: `change-${d.change}`},
        h("details", {}, h("summary", {}, `${d.change} ${d.kind}/${d.namespace ? d.namespace + "/" : ""}${d.name}`),
          h("pre", {}, d.diff)))));
    } catch (err) {
      if (here()) $("env-objects-status").textContent = `Could not load the objects (${err.message}).`;
    }
  }

  // -- promotions ---------------------------------------------------------------------------
  // -- actions: each a commit, shown with what it made ---------------------------------------
  const WEB_URL = /^https?:\/\//i;  // a pull request's address: never a javascript: URL

  async function postJSON(path, body) {
    const resp = await fetch(path, {method: "POST", body: JSON.stringify(body || {}),
      headers: authHeaders({"Content-Type": "application/json", Accept: "application/json"})});
    let data = {};
    try { data = await resp.json(); } catch (err) { data = {}; }
    if (resp.status === 401) showLogin(storedToken() ? "That token was not accepted." : "");
    return {status: resp.status, data};
  }

  function actionResult(target, verb, answer) {
    const {status, data} = answer;
    if (status >= 400) {
      target.replaceChildren(h("span", {class: "bad"},
        `${verb} refused (${status}): ${data.error || "no reason given"}`));
      return;
    }
    const pr = data.pull_request;
    if (pr && WEB_URL.test(pr.url || "")) {
      target.replaceChildren(`${verb}: proposed in pull request `,
        h("a", {href: pr.url, rel: "noopener noreferrer"}, `#${pr.number}`), ".");
    } else if (data.changed === false) {
      target.replaceChildren(`${verb}: nothing to change, the declaration already says so.`);
    } else if (data.commit) {
      target.replaceChildren(`${verb}: committed `, commitLink(data.commit),
        ` to ${data.branch || "the branch"}.`);
    } else {
      target.replaceChildren(`${verb}: requested ${short(data.requested || "")}.`);
    }
  }

  async function act(target, verb, path, body) {
    target.textContent = `${verb}…`;
    try {
      actionResult(target, verb, await postJSON(path, body));
    } catch (err) {
      target.textContent = `${verb} failed (${err.message}).`;
    }
  }

  async function renderPromotions() {
    const status = $("promotions-status");
    let body;
    try {
      body = await getJSON("/api/v1/promotions");
    } catch (err) {
      status.textContent = `Could not load the promotions (${err.message}).`;
      return;
    }
    if (!state.route || state.route.view !== "promotions") return;
    const rows = body.promotions || [];
    status.textContent = rows.length ? count(rows.length, "promotion path")
      : "No promotion: in conveyor.yaml.";
    $("promotions").tBodies[0].replaceChildren(...rows.map((r) => {
      const same = r.from_runs && r.from_runs === r.to_runs;
      return h("tr", {"data-to": r.to, "data-gate": r.gate.allowed ? "open" : "closed"},
        h("td", {"data-label": "From"}, envLink(r.from)),
        h("td", {"data-label": "Runs"}, commitLink(r.from_runs)),
        h("td", {"data-label": "To"}, envLink(r.to)),
        h("td", {"data-label": "Runs"}, commitLink(r.to_runs), same ? " (the same)" : ""),
        h("td", {"data-label": "Auto"}, r.auto ? "automatic" : "by hand"),
        h("td", {"data-label": "Gate", class: r.gate.allowed ? "good" : "warn"},
          `${r.gate.allowed ? "open" : "closed"}: ${r.gate.reason}`),
        h("td", {"data-label": "Action"}, promoteButton(r)));
    }));
  }

  function promoteButton(r) {
    const button = h("button", {type: "button", class: "promote", "data-to": r.to},
      `Promote ${r.from} to ${r.to}`);
    button.addEventListener("click", () => act($("promote-result"),
      `Promote ${r.from} to ${r.to}`,
      `/api/v1/environments/${encodeURIComponent(r.to)}/promotions`, {from: r.from}));
    return button;
  }

  function wireActions() {
    const envName = () => (state.route && state.route.view === "env" ? state.route.name : "");
    const envPath = (what) => `/api/v1/environments/${encodeURIComponent(envName())}/${what}`;
    $("release-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const image = $("release-image").value.trim();
      if (!image || !envName()) return;
      act($("action-result"), `Release ${image}`, envPath("releases"), {images: [image]});
    });
    $("rollback-button").addEventListener("click", () => {
      if (envName()) act($("action-result"), "Roll back", envPath("rollback"), {steps: 1});
    });
    $("sync-button").addEventListener("click", () => {
      if (envName()) act($("action-result"), "Sync", envPath("sync"), {});
    });
  }

  // -- routing and live refresh --------------------------------------------------------------
  function parseRoute() {
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    if (parts[0] === "promotions") return {view: "promotions"};
    if (parts[0] === "commit" && SHA.test(parts[1] || "")) return {view: "commit", sha: parts[1]};
    if (parts[0] === "env" && ENV.test(parts[1] || "")) return {view: "env", name: parts[1]};
    return {view: "home"};
  }

  const refreshView = debounce(() => render(false), 250);

  function onLiveEvent(e) {
    const r = state.route;
    if (!r) return;
    if (r.view === "commit" && e.correlationid && e.correlationid.startsWith(r.sha)) {
      refreshView();
    } else if (r.view === "env" && e.subject === r.name) {
      refreshView();
    } else if (r.view === "promotions" && /^conveyor\.(apply|health|promotion|config)\./
      .test(e.type || "")) {
      refreshView();
    }
  }

  function render(navigated) {
    const route = parseRoute();
    state.route = route;
    for (const view of ["home", "commit", "env", "promotions"]) {
      $(`view-${view}`).hidden = view !== route.view;
    }
    if (route.view === "commit") renderCommit(route.sha);
    if (route.view === "env") renderEnv(route.name);
    if (route.view === "promotions") renderPromotions();
    document.title = route.view === "commit" ? `Commit ${short(route.sha)} · Conveyor`
      : route.view === "env" ? `${route.name} · Conveyor`
        : route.view === "promotions" ? "Promotions · Conveyor" : "Conveyor";
    if (navigated) {
      const title = $({home: "home-title", commit: "commit-title", env: "env-title",
        promotions: "promotions-title"}[route.view]);
      title.focus({preventScroll: false});
    }
  }

  function tick() {
    for (const el of document.querySelectorAll("time.ago")) {
      el.textContent = ago(el.getAttribute("datetime"));
    }
  }

  function start() {
    $("commit-search").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const text = $("commit-sha").value.trim();
      // an environment's name may look like a short sha ("e0500"): a known name wins
      if (state.envs.has(text)) location.hash = `#/env/${encodeURIComponent(text)}`;
      else if (SHA.test(text)) location.hash = `#/commit/${text.toLowerCase()}`;
    });
    for (const id of ["env-search", "env-health", "env-outcome", "env-group"]) {
      $(id).addEventListener(id === "env-search" ? "input" : "change", scheduleRender);
    }
    $("env-filters").addEventListener("submit", (ev) => ev.preventDefault());
    $("skip-link").addEventListener("click", (ev) => {  // not a route: just move focus
      ev.preventDefault();
      $("main").focus();
    });
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("login-token").value.trim();
      $("login-token").value = "";
      if (token) signIn(token);
    });
    $("sign-out").addEventListener("click", signOut);
    $("sign-out").hidden = !storedToken();
    window.addEventListener("hashchange", () => {
      $("action-result").textContent = "";
      render(true);
    });
    wireActions();
    render(false);
    // the cards first, from one request; then the stream, which sends only what changes
    // after them (every environment again would cost the first paint a second render)
    loadEnvs().finally(connect);
    setInterval(tick, 10000);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
