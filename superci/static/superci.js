// superci's web page, live: one EventSource per page applies the dispatcher's events to
// the server-rendered HTML (which works without this script), and the commit page's log
// viewer colours the log, loads earlier lines on demand and follows new output.
// Everything from commits goes in as textContent, or through ansi_up, which escapes it.
import { AnsiUp } from "./ansi_up.js";

const COUNTED = [["passed", "passed", "passed"], ["failed", "failed", "failed"],
                 ["errors", "error", "errors"], ["skipped", "skipped", "skipped"]];

function countsText(tests) {
  if (!tests || Object.keys(tests).length === 0) return "";
  return COUNTED.map(([key, one, many]) => {
    const n = tests[key] || 0;
    return `${n} ${n === 1 ? one : many}`;
  }).join(", ");
}

function durationText(seconds) {
  return seconds === null || seconds === undefined ? "" : `${seconds.toFixed(1)}s`;
}

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (text) node.textContent = text;
  return node;
}

function statusSpan(status) {
  return element("span", { class: `s-${status}` }, status);
}

function labelsText(labels) {
  return Object.entries(labels || {}).map(([key, value]) => `${key}=${value}`).join(" ");
}

function commitLink(sha) {
  const link = element("a", { href: `/commit/${encodeURIComponent(sha)}` });
  link.append(element("code", {}, sha.slice(0, 12)));
  return link;
}

function setCell(row, name, content) {
  const cell = row && row.querySelector(`.c-${name}`);
  if (!cell) return;
  if (typeof content === "string") cell.textContent = content;
  else cell.replaceChildren(content);
}

function connect(handlers) {
  const since = encodeURIComponent(document.body.dataset.events || "0");
  const source = new EventSource(`/events?since=${since}`);
  for (const [kind, handle] of Object.entries(handlers)) {
    source.addEventListener(kind, (message) => handle(JSON.parse(message.data)));
  }
  // Events were lost (the browser was away longer than the ring holds): read it all again.
  source.addEventListener("resync", () => { source.close(); location.reload(); });
  return source;
}

// --- / : the queue and the builds -------------------------------------------------------

function buildsPage() {
  const builds = document.querySelector("#builds tbody");
  const table = document.getElementById("builds");
  const queue = document.querySelector("#queue tbody");
  const queued = document.getElementById("queued");

  function add(tbody, row) {
    tbody.querySelectorAll("tr.none").forEach((none) => none.remove());
    tbody.prepend(row);
  }
  function countQueue() {
    if (!queue) return;
    const waiting = queue.querySelectorAll("tr:not(.none)").length;
    if (queued) queued.textContent = String(waiting);
    if (waiting === 0 && !queue.querySelector("tr.none")) {  // as the server shows it
      const none = element("tr", { class: "none" });
      none.append(element("td", { colspan: "5" }, "empty"));
      queue.append(none);
    }
  }
  // Why each build waits changes with the pool, so the queue is asked of the server again
  // (once for a burst of events) whenever a build or a runner changes.
  let queueAsked = null;
  async function refreshQueue() {
    queueAsked = null;
    const answer = await (await fetch(`/api/builds?limit=${table.dataset.size || 50}`)).json();
    const rows = answer.queue.map((j) => row(`q-${j.build_id}`, [["commit", commitLink(j.sha)],
      ["branch", j.branch], ["attempt", String(j.attempt)], ["needs", labelsText(j.needs)],
      ["why", j.waiting || ""]]));
    queue.replaceChildren(...rows);
    if (queued) queued.textContent = String(answer.queued);
    countQueue();
  }
  function askQueue() {
    if (queue && queueAsked === null) queueAsked = setTimeout(refreshQueue, 100);
  }
  function unqueue(id) {
    const row = document.getElementById(`q-${id}`);
    if (row) row.remove();
    countQueue();
  }
  function row(id, cells) {
    const tr = element("tr", { id });
    for (const [name, content] of cells) {
      const td = element("td", { class: `c-${name}` });
      if (typeof content === "string") td.textContent = content; else td.append(content);
      tr.append(td);
    }
    return tr;
  }
  function finished(e) {
    const tr = document.getElementById(`b-${e.build_id}`);
    setCell(tr, "status", statusSpan(e.status));
    setCell(tr, "duration", durationText(e.duration));
    setCell(tr, "runner", e.runner || "");
    setCell(tr, "attempt", String(e.attempt));
    setCell(tr, "tests", countsText(e.tests));
    unqueue(e.build_id);
  }
  return {
    queued(e) {
      let tr = document.getElementById(`b-${e.build_id}`);
      const attempt = tr ? tr.querySelector(".c-attempt").textContent : "0";
      const wanted = table.dataset.firstPage && (!table.dataset.branch || table.dataset.branch === e.branch);
      if (!tr && wanted) {
        tr = row(`b-${e.build_id}`, [["commit", commitLink(e.sha)], ["branch", e.branch],
          ["subject", e.subject || ""], ["author", e.author || ""],
          ["status", statusSpan("queued")], ["duration", ""], ["runner", ""],
          ["attempt", attempt], ["tests", ""]]);
        add(builds, tr);
        while (builds.rows.length > Number(table.dataset.size)) builds.lastElementChild.remove();
      }
      setCell(tr, "status", statusSpan("queued"));
      askQueue();
    },
    started(e) {
      const tr = document.getElementById(`b-${e.build_id}`);
      setCell(tr, "status", statusSpan("running"));
      setCell(tr, "runner", e.runner);
      setCell(tr, "attempt", String(e.attempt));
      unqueue(e.build_id);
      askQueue();
    },
    finished(e) { finished(e); askQueue(); },
    cancelled(e) { finished(e); askQueue(); },
    joined: askQueue, left: askQueue, busy: askQueue, idle: askQueue,
  };
}

// --- /commit/<sha> : facts, buttons and the log -------------------------------------------

class LogViewer {
  constructor(box) {
    this.box = box;
    this.sha = box.dataset.sha;
    this.build = box.dataset.build;
    this.start = Number(box.dataset.start);
    this.end = Number(box.dataset.end);
    this.first = Number(box.dataset.first);
    this.count = box.querySelectorAll(".l").length;
    this.ansi = new AnsiUp();
    this.fetching = false;
    this.again = false;
    this.generation = 0;
    this.earlierButton = document.getElementById("earlier");
    this.colourShown();
    this.earlierButton.hidden = this.start === 0;
    this.earlierButton.addEventListener("click", () => this.loadEarlier());
    this.showAnchored();
  }

  // A link to a line before those shown (#L123): load earlier windows until it is in the
  // page, if it is a few windows away; past that the raw log is the place for it.
  async showAnchored() {
    const wanted = /^#L(\d+)$/.exec(location.hash);
    if (!wanted) return;
    const number = Number(wanted[1]);
    for (let step = 0; step < 5 && number < this.first && this.start > 0; step++) {
      await this.loadEarlier();
    }
    const line = document.getElementById(`L${number}`);
    if (line) {
      line.classList.add("target");  // :target is decided before the line was here
      line.scrollIntoView();
    }
  }

  url(query) {
    return `/commit/${encodeURIComponent(this.sha)}/log.json?build=${this.build}&${query}`;
  }

  // The server shows the lines without their colour codes; colour them here, in order,
  // so a colour that spans lines carries over.
  colourShown() {
    for (const text of this.box.querySelectorAll(".l .t")) {
      const raw = text.dataset.a === undefined ? text.textContent : text.dataset.a;
      const html = this.ansi.ansi_to_html(raw);
      if (text.dataset.a !== undefined || html.includes("<")) text.innerHTML = html;
    }
  }

  line(number, raw, ansi) {
    const div = element("div", { class: "l", id: `L${number}` });
    div.append(element("a", { class: "n", href: `#L${number}` }, String(number)));
    const text = element("span", { class: "t" });
    text.innerHTML = ansi.ansi_to_html(raw);  // ansi_up escapes the text
    div.append(text);
    return div;
  }

  static lines(text) {
    const lines = text.split("\n");
    if (text.endsWith("\n")) lines.pop();
    return text === "" ? [] : lines;
  }

  said() {
    const last = this.first + this.count - 1;
    const shown = document.getElementById("log-lines");
    if (shown && this.count) shown.textContent = `lines ${this.first}–${last}`;
  }

  async loadEarlier() {
    this.earlierButton.disabled = true;
    try {
      const answer = await (await fetch(this.url(`before=${this.start}`))).json();
      const lines = LogViewer.lines(answer.text);
      const ansi = new AnsiUp();  // the colour in force before these lines is not known
      const first = this.first - lines.length;
      const nodes = lines.map((raw, n) => this.line(first + n, raw, ansi));
      this.box.prepend(...nodes);
      this.start = answer.start;
      this.first = first;
      this.count += lines.length;
      this.said();
      this.earlierButton.hidden = this.start === 0;
    } finally {
      this.earlierButton.disabled = false;
    }
  }

  // New output arrived: fetch what follows what is shown (one request at a time; events
  // that arrive meanwhile are served by one more request).
  async follow() {
    if (this.fetching) { this.again = true; return; }
    this.fetching = true;
    try {
      do {
        this.again = false;
        const generation = this.generation;
        const answer = await (await fetch(this.url(`from=${this.end}`))).json();
        if (generation !== this.generation) { this.again = true; continue; }
        if (answer.first_line !== null) this.replace(answer);  // the log began again
        else this.append(answer);
        if (answer.more) this.again = true;  // the rest of a long burst
      } while (this.again);
    } finally {
      this.fetching = false;
    }
  }

  // A new attempt begins its log afresh: show it from its start.
  async restart() {
    this.generation += 1;  // an answer still on its way belongs to the old attempt
    this.replace({ start: 0, end: 0, text: "", first_line: 1 });
    await this.follow();
  }

  append(answer) {
    const lines = LogViewer.lines(answer.text);
    if (!lines.length) return;
    const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 60;
    this.box.append(...lines.map((raw, n) => this.line(this.first + this.count + n, raw, this.ansi)));
    this.count += lines.length;
    this.end = answer.end;
    this.said();
    if (atBottom) window.scrollTo(0, document.body.scrollHeight);
  }

  replace(answer) {
    this.ansi = new AnsiUp();
    this.box.replaceChildren();
    this.start = answer.start;
    this.first = answer.first_line;
    this.count = 0;
    this.end = answer.start;
    this.append(answer);
    this.end = answer.end;
    this.earlierButton.hidden = this.start === 0;
  }
}

function commitPage() {
  const viewer = new LogViewer(document.getElementById("log"));
  const build = Number(viewer.build);
  const fact = (name, content) => {
    const cell = document.getElementById(`f-${name}`);
    if (!cell) return;
    if (typeof content === "string") cell.textContent = content; else cell.replaceChildren(content);
  };
  const buttons = (unfinished) => {
    const cancel = document.getElementById("cancel");
    const rebuild = document.getElementById("rebuild");
    if (cancel) cancel.hidden = !unfinished;
    if (rebuild) rebuild.hidden = unfinished;
  };
  async function finished(e) {
    fact("status", statusSpan(e.status));
    fact("message", e.message || "");
    fact("tests", countsText(e.tests));
    fact("duration", durationText(e.duration));
    fact("runner", e.runner || "");
    fact("attempt", String(e.attempt));
    buttons(false);
    await viewer.follow();
    const document_ = await (await fetch(`/api/commit/${encodeURIComponent(viewer.sha)}`)).json();
    if (document_.build_id !== build) return;
    fact("finished", document_.finished_at || "");
    fact("runners", (document_.runners || []).join(", "));
    const failures = document_.failures || [];
    const box = document.getElementById("failures");
    box.querySelector("h2").textContent = `Failures (${failures.length})`;
    box.querySelector("ul").replaceChildren(...failures.map((f) => {
      const item = element("li");
      item.append(element("pre", {}, String(f)));
      return item;
    }));
    box.hidden = failures.length === 0;
  }
  const mine = (handle) => (e) => { if (e.build_id === build) handle(e); };
  return {
    queued(e) {
      if (e.sha !== viewer.sha) return;
      if (e.build_id !== build) { location.reload(); return; }  // a rebuild: show it
      fact("status", statusSpan("queued"));
      buttons(true);
    },
    started: mine((e) => {
      fact("status", statusSpan("running"));
      fact("runner", e.runner);
      fact("attempt", String(e.attempt));
      fact("started", new Date(e.time * 1000).toISOString());
      buttons(true);
      if (e.attempt > 1) viewer.restart();
    }),
    output: mine(() => viewer.follow()),
    finished: mine(finished),
    cancelled: mine(finished),
  };
}

// --- /runners --------------------------------------------------------------------------------

function runnersPage() {
  const tbody = document.querySelector("#runners tbody");
  let pending = null;
  async function refresh() {
    pending = null;
    const answer = await (await fetch("/api/runners")).json();
    const rows = answer.runners.map((r) => {
      const tr = element("tr");
      const cells = [["name", r.name], ["host", r.host], ["state", r.state],
        ["build", r.build ? commitLink(r.build) : ""],
        ["heartbeat", String(r.since_heartbeat)], ["benched", r.reason || ""],
        ["labels", labelsText(r.labels)], ["exclusive", r.exclusive ? "yes" : "no"]];
      for (const [name, content] of cells) {
        const td = element("td", { class: `c-${name}` });
        if (typeof content === "string") td.textContent = content; else td.append(content);
        tr.append(td);
      }
      return tr;
    });
    if (!rows.length) {
      const none = element("tr", { class: "none" });
      none.append(element("td", { colspan: "8" }, "no runners"));
      rows.push(none);
    }
    tbody.replaceChildren(...rows);
  }
  // Several events in a burst (a build starts: busy and started) make one request.
  const later = () => { if (pending === null) pending = setTimeout(refresh, 50); };
  return { joined: later, left: later, busy: later, idle: later, started: later,
           finished: later, cancelled: later };
}

const pages = { builds: buildsPage, commit: commitPage, runners: runnersPage };
const page = pages[document.body.dataset.view];
if (page) connect(page());
