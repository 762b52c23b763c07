// The dashboard's script. Every figure comes from the wrapper's JSON routes, read with the
// admin key typed into the page: the key is kept in sessionStorage only (gone with the tab)
// and sent only as "Authorization: Bearer" to this origin, never in a URL or a cookie.
// Text is set with textContent (never HTML): key and model names cannot inject markup.
"use strict";

(() => {
  const STORE = "vllm-autoscale.admin-key";
  const REFRESH_MS = 60000;
  const DAY_S = 86400;
  const SVG = "http://www.w3.org/2000/svg";
  const UNALLOCATED = "(unallocated)";
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let generation = 0; // a newer load makes an older one's answers stale

  // -- formatting ---------------------------------------------------------------------------

  const int = (n) => Math.round(n).toLocaleString("en-US");
  // Cents, or as many digits as a small amount needs to be read within 0.5%.
  const usd = (n) => {
    const digits = [2, 4, 6].find((d) => Math.abs(Number(n.toFixed(d)) - n)
      <= Math.abs(n) * 0.005) ?? 6;
    return "$" + n.toLocaleString("en-US", {
      minimumFractionDigits: digits, maximumFractionDigits: digits,
    });
  };
  const secs = (n) => {
    if (Math.abs(n) < 120) return n.toFixed(1) + " s";
    if (Math.abs(n) < 7200) return (n / 60).toFixed(1) + " min";
    return (n / 3600).toFixed(2) + " h";
  };
  const pct = (x) => (x * 100).toFixed(x !== 0 && Math.abs(x) < 0.01 ? 3 : 1) + "%";
  const clock = (t) => new Date(t * 1000).toLocaleTimeString("en-GB", {
    hour: "2-digit", minute: "2-digit",
  });
  const ago = (t, now) => (t ? secs(Math.max(0, now - t)) + " ago" : "never");

  // -- building the page --------------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // A figure the tests can find: data-figure names it, its text is the formatted value.
  const fig = (name, text, tag = "span") => el(tag, { "data-figure": name }, text);

  // A table whose first ``lead`` columns are text (left-aligned), the rest figures.
  function table(head, rows, foot, lead = 1) {
    const thead = el("thead", {}, el("tr", {}, ...head.map((h) => el("th", {}, h))));
    const tbody = el("tbody", {}, ...rows);
    return el("table", { class: "lead" + lead }, thead, tbody,
      foot ? el("tfoot", {}, foot) : null);
  }

  function bar(share, kind) {
    const fill = el("span", { class: "fill " + kind });
    fill.style.width = Math.min(100, Math.max(0, share * 100)).toFixed(1) + "%"; // CSSOM
    return el("span", { class: "bar" }, fill);
  }

  function setState(state, text) {
    const node = $("state");
    node.dataset.state = state;
    node.textContent = text;
  }

  function clearFigures() {
    $("figures").hidden = true;
    for (const id of ["stamp", "now-cards", "timeline-chart", "spend-models", "spend-keys",
      "usage-table", "advice-cards"]) {
      $(id).replaceChildren();
    }
  }

  // -- the JSON routes ----------------------------------------------------------------------

  async function get(path, key) {
    const response = await fetch(path, {
      headers: { Authorization: "Bearer " + key, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    return { path, status: response.status, ok: response.ok, body };
  }

  const message = (answer) => (answer.body && answer.body.error && answer.body.error.message)
    || "HTTP " + answer.status;

  function utcDay(date) {
    return date.toISOString().slice(0, 10);
  }

  function modelsOf(status) {
    if (status.models) return Object.keys(status.models);
    return [status.model];
  }

  // -- the sections -------------------------------------------------------------------------

  function renderNow(status, gpu, now) {
    const cards = $("now-cards");
    for (const model of modelsOf(status)) {
      const st = status.models ? status.models[model] : status;
      const g = gpu && gpu.models ? gpu.models[model] : null;
      const rows = [
        ["Requests waiting", fig(`now.${model}.queue_depth`, int(st.queue_depth))],
        ["In flight", fig(`now.${model}.in_flight`, int(st.in_flight))],
        ["Cold starts (since the wrapper started)", fig(`now.${model}.cold_starts`,
          int(st.cold_starts))],
        ["Scale-down window", st.scaledown_window === null ? "kept up"
          : fig(`now.${model}.scaledown_window`, secs(st.scaledown_window))],
        ["Last request", ago(st.last_request_at, now)],
      ];
      if (st.gpu_containers !== undefined) {
        rows.push(["GPU containers", fig(`now.${model}.gpu_containers`,
          `${int(st.gpu_containers)} of ${st.gpu_containers_max ?? "?"}`)]);
      }
      if (g) {
        rows.push(["Price", fig(`now.${model}.price`, usd(g.price_per_hour_usd) + "/h")]);
        rows.push(["Up today", fig(`now.${model}.today.up_s`, secs(g.today.up_s))]);
        rows.push(["… busy / boot / idle", el("span", {},
          fig(`now.${model}.today.busy_s`, secs(g.today.busy_s)), " / ",
          fig(`now.${model}.today.boot_s`, secs(g.today.boot_s)), " / ",
          fig(`now.${model}.today.idle_s`, secs(g.today.idle_s)))]);
        rows.push(["Cost today", fig(`now.${model}.today.cost_usd`, usd(g.today.cost_usd))]);
      }
      if (st.last_error) rows.push(["Last error", el("span", { class: "error" }, st.last_error)]);
      const state = el("span", { class: "badge state-" + st.state,
        "data-figure": `now.${model}.state` }, st.state);
      cards.append(el("article", { class: "card" },
        el("h3", {}, model, " ", state),
        el("dl", {}, ...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]))));
    }
  }

  function renderTimeline(status, gpu, gpuAnswer) {
    const chart = $("timeline-chart");
    if (!gpu) {
      chart.append(el("p", { class: "note", "data-figure": "timeline.missing" },
        `Waiting for GET /v1/gpu (it answered ${gpuAnswer.status}): `
        + "no container lives to draw yet."));
      return;
    }
    const models = modelsOf(status);
    const end = gpu.now;
    const start = end - DAY_S;
    const left = 150, right = 12, top = 24, lane = 34, width = 960;
    const height = top + lane * models.length + 8;
    const x = (t) => left + ((Math.min(Math.max(t, start), end) - start) / DAY_S)
      * (width - left - right);
    const chartSvg = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": "GPU containers up and down over the last 24 hours" });
    // Hour ticks every 3 hours, on the hour.
    const first = Math.ceil(start / 3600) * 3600;
    for (let t = first; t <= end; t += 3600) {
      const hour = new Date(t * 1000).getHours();
      if (hour % 3) continue;
      chartSvg.append(svg("line", { class: "tick", x1: x(t), x2: x(t), y1: top - 4,
        y2: height - 8 }));
      chartSvg.append(svg("text", { class: "tick-label", x: x(t), y: top - 8,
        "text-anchor": "middle" }, clock(t)));
    }
    models.forEach((model, i) => {
      const y = top + i * lane;
      const short = model.split("/").pop();
      chartSvg.append(svg("text", { class: "lane-label", x: 0, y: y + lane / 2 + 4 },
        short.length > 21 ? short.slice(0, 20) + "…" : short));
      chartSvg.append(svg("rect", { class: "lane", x: left, y: y + 4,
        width: width - left - right, height: lane - 8 }));
      const lives = gpu.lives.filter((l) => l.model === model
        && (l.stopped_at === null || l.stopped_at >= start));
      for (const life of lives) {
        const stop = life.stopped_at === null ? end : life.stopped_at;
        const ready = life.ready_at === null ? stop : Math.min(life.ready_at, stop);
        const group = svg("g", { class: "life" + (life.estimated ? " estimated" : ""),
          "data-container": life.container, "data-model": model });
        group.append(svg("title", {}, `${life.container}: up ${clock(life.up_since)}`
          + (life.stopped_at === null ? ", still up" : `, down ${clock(life.stopped_at)}`)
          + `; ${life.requests} request(s)` + (life.estimated ? "; stop estimated" : "")));
        if (ready > Math.max(life.up_since, start)) {
          group.append(svg("rect", { class: "boot", x: x(life.up_since), y: y + 8,
            width: Math.max(1, x(ready) - x(life.up_since)), height: lane - 16 }));
        }
        // At least 3 px: a container up for a minute is still seen on a day's scale.
        group.append(svg("rect", { class: "up", x: x(ready), y: y + 8,
          width: Math.max(3, x(stop) - x(ready)), height: lane - 16 }));
        if (life.cold_start && life.up_since >= start) {
          const cx = x(life.up_since);
          group.append(svg("path", { class: "cold", d: `M${cx - 5},${y + lane - 2} `
            + `L${cx + 5},${y + lane - 2} L${cx},${y + lane - 10} Z` }));
        }
        chartSvg.append(group);
      }
    });
    chart.append(chartSvg);
    chart.append(el("p", { class: "legend" },
      el("span", { class: "swatch boot" }), " booting ",
      el("span", { class: "swatch up" }), " up ",
      el("span", { class: "swatch estimated" }), " stop estimated ",
      "▲ cold start (a request waited for the boot)"));
    // The same lives as text, the latest first.
    const recent = gpu.lives.filter((l) => l.stopped_at === null || l.stopped_at >= start)
      .sort((a, b) => b.up_since - a.up_since).slice(0, 12);
    if (!recent.length) {
      chart.append(el("p", { class: "note" }, "No GPU container was up in the last 24 hours."));
      return;
    }
    const rows = recent.map((l) => {
      const stop = l.stopped_at === null ? end : l.stopped_at;
      const id = `life.${l.container}`;
      return el("tr", {},
        el("td", {}, l.container), el("td", {}, l.model), el("td", {}, clock(l.up_since)),
        el("td", {}, l.ready_at === null ? "not ready"
          : fig(`${id}.boot_s`, secs(l.ready_at - l.up_since))),
        el("td", {}, l.stopped_at === null ? "up" : clock(l.stopped_at)
          + (l.estimated ? " (estimated)" : "")),
        el("td", {}, fig(`${id}.up_s`, secs(stop - l.up_since))),
        el("td", {}, fig(`${id}.requests`, int(l.requests))),
        el("td", {}, l.cold_start ? "yes" : "no"));
    });
    chart.append(table(["Container", "Model", "Up at", "Boot", "Down at", "Up for", "Requests",
      "Cold start"], rows, null, 2));
  }

  function usageByKey(usage) {
    const keys = new Map();
    for (const row of usage.data) {
      const acc = keys.get(row.key) || { requests: 0, prompt_tokens: 0, completion_tokens: 0,
        cache_hits: 0, gpu_seconds: 0, cost_usd: 0 };
      for (const name of Object.keys(acc)) acc[name] += row[name] || 0;
      keys.set(row.key, acc);
    }
    return keys;
  }

  function renderSpend(status, gpu, gpuAnswer, keys, byKey) {
    const models = $("spend-models");
    if (gpu) {
      const rows = [];
      for (const model of modelsOf(status)) {
        const m = gpu.models[model];
        if (!m) continue;
        const month = m.month;
        const share = month.always_on_usd > 0 ? month.cost_usd / month.always_on_usd : 0;
        rows.push(el("tr", {},
          el("td", {}, model),
          el("td", {}, fig(`spend.${model}.cost_usd`, usd(month.cost_usd))),
          el("td", {}, fig(`spend.${model}.always_on_usd`, usd(month.always_on_usd))),
          el("td", { class: "wide" }, bar(share, "spent"), " ",
            fig(`spend.${model}.share`, pct(share))),
          el("td", {}, fig(`spend.${model}.allocated_usd`, usd(month.allocated_usd))),
          el("td", {}, fig(`spend.${model}.unallocated_usd`, usd(month.unallocated_usd))),
          el("td", {}, fig(`spend.${model}.up_s`, secs(month.up_s)))));
      }
      models.append(table(["Model", "GPU spend", "Always on, same days", "Of always on",
        "To keys", "Unallocated", "Up"], rows));
      models.append(el("p", { class: "note" }, `Cost allocation: ${gpu.policy}. `
        + "Always on: the GPU's price for every second of the month so far."));
    } else {
      models.append(el("p", { class: "note", "data-figure": "spend.missing" },
        `Waiting for GET /v1/gpu (it answered ${gpuAnswer.status}): the always-on `
        + "comparison needs it."));
    }
    const rows = keys.data.map((k) => {
      const used = byKey.get(k.name);
      const spent = k.month_spend_usd ?? (used ? used.cost_usd : 0);
      const budget = k.monthly_budget_usd;
      const share = budget ? spent / budget : 0;
      const kind = !budget ? "none" : share >= 1 ? "over" : share >= 0.8 ? "near" : "spent";
      return el("tr", {},
        el("td", {}, k.name), el("td", {}, k.role),
        el("td", {}, fig(`budget.${k.name}.spent`, usd(spent))),
        el("td", {}, budget === null || budget === undefined ? "no budget"
          : fig(`budget.${k.name}.budget`, usd(budget))),
        el("td", { class: "wide" }, budget ? bar(share, kind) : null, " ",
          budget ? fig(`budget.${k.name}.share`, pct(share)) : ""));
    });
    $("spend-keys").append(table(["Key", "Role", "Spent", "Budget", "Of budget"], rows,
      null, 2));
  }

  function renderUsage(usage, byKey) {
    const fields = ["requests", "prompt_tokens", "completion_tokens", "cache_hits"];
    const names = [...byKey.keys()].sort((a, b) => (a === UNALLOCATED) - (b === UNALLOCATED)
      || a.localeCompare(b));
    const rows = names.map((name) => {
      const u = byKey.get(name);
      return el("tr", { class: name === UNALLOCATED ? "unallocated" : null },
        el("td", {}, name),
        ...fields.map((f) => el("td", {}, fig(`usage.${name}.${f}`, int(u[f])))),
        el("td", {}, fig(`usage.${name}.gpu_seconds`, secs(u.gpu_seconds))),
        el("td", {}, fig(`usage.${name}.cost_usd`, usd(u.cost_usd))));
    });
    const t = usage.totals;
    const foot = el("tr", {}, el("th", {}, "Total"),
      ...fields.map((f) => el("th", {}, fig(`usage.total.${f}`, int(t[f] || 0)))),
      el("th", {}, fig("usage.total.gpu_seconds", secs(t.gpu_seconds || 0))),
      el("th", {}, fig("usage.total.cost_usd", usd(t.cost_usd || 0))));
    const box = $("usage-table");
    if (!rows.length) box.append(el("p", { class: "note" }, "No usage this month yet."));
    box.append(table(["Key", "Requests", "Prompt tokens", "Completion tokens", "Cache hits",
      "GPU time (allocated)", "Cost"], rows, foot));
    if (byKey.has(UNALLOCATED)) {
      box.append(el("p", { class: "note" }, `${UNALLOCATED}: boot and idle GPU time no key `
        + "is charged for (warm-ups, warm windows, or every overhead under the "
        + "overhead policy)."));
    }
    if (t.provisional) {
      box.append(el("p", { class: "note" }, "Provisional: a container is still up, so its "
        + "allocated time grows until it stops."));
    }
  }

  function renderAdvice(advices) {
    const box = $("advice-cards");
    for (const answer of advices) {
      const a = answer.body;
      if (!answer.ok) {
        box.append(el("article", { class: "card" }, el("h3", {}, answer.model),
          el("p", { class: "error" }, message(answer))));
        continue;
      }
      const model = a.model;
      const line = (label, row, name) => [
        el("dt", {}, label),
        el("dd", {}, fig(`advice.${model}.${name}.label`, row.label), ": ",
          fig(`advice.${model}.${name}.monthly_usd`, usd(row.monthly_usd)), "/month, ",
          fig(`advice.${model}.${name}.wait_share`, pct(row.wait_share)), " wait (mean ",
          fig(`advice.${model}.${name}.mean_wait`, secs(row.mean_wait)), ")"),
      ];
      const body = a.recommended === null
        ? [el("p", { class: "note", "data-figure": `advice.${model}.reason` }, a.reason)]
        : [el("dl", {}, ...line("Recommended", a.recommended, "recommended"),
          ...line("Current", a.current, "current"), ...line("Always on", a.always_on,
            "always_on")),
        el("p", { class: "note", "data-figure": `advice.${model}.reason` }, a.reason)];
      box.append(el("article", { class: "card" },
        el("h3", {}, model),
        el("p", { class: "note" }, fig(`advice.${model}.requests`, int(a.requests)),
          ` request(s) replayed, boot ${secs(a.boot_seconds)} `
          + (a.boots_recorded ? `(median of ${a.boots_recorded} recorded)` : "(assumed)")),
        ...body));
    }
  }

  // -- loading ------------------------------------------------------------------------------

  function refuse(status, text) {
    sessionStorage.removeItem(STORE);
    stop();
    clearFigures();
    setState(status === 401 ? "refused" : "forbidden", text);
    $("forget").hidden = true;
    $("refresh").hidden = true;
    $("key").focus();
  }

  function refusal(answers) {
    const denied = answers.find((a) => a.status === 401 || a.status === 403);
    if (!denied) return false;
    if (denied.status === 401) {
      refuse(401, "Key refused (401): the wrapper does not know this key. Enter an admin key.");
    } else {
      refuse(403, "Not an admin (403): this key may not see the team's figures. "
        + "Enter an admin key.");
    }
    return true;
  }

  async function load() {
    const key = sessionStorage.getItem(STORE);
    const mine = ++generation;
    if (!key) {
      clearFigures();
      setState("key-required", "Key required: enter an admin key to see the figures.");
      return;
    }
    setState("loading", "Loading…");
    try {
      const keys = await get("/v1/keys", key);
      if (mine !== generation || refusal([keys])) return;
      if (!keys.ok) throw new Error(`/v1/keys: ${message(keys)}`);
      const today = new Date();
      const monthStart = utcDay(new Date(Date.UTC(today.getUTCFullYear(),
        today.getUTCMonth(), 1)));
      const [status, usage, gpu] = await Promise.all([
        get("/status", key),
        get(`/v1/usage?start=${monthStart}&end=${utcDay(today)}`, key),
        get("/v1/gpu?days=1", key),
      ]);
      if (mine !== generation || refusal([status, usage, gpu])) return;
      for (const answer of [status, usage]) {
        if (!answer.ok) throw new Error(`${answer.path}: ${message(answer)}`);
      }
      const models = modelsOf(status.body);
      const advices = await Promise.all(models.map(async (model) => ({ model,
        ...(await get(`/v1/gpu/advice?model=${encodeURIComponent(model)}&days=7`, key)) })));
      if (mine !== generation || refusal(advices)) return;
      const now = Date.now() / 1000;
      const gpuBody = gpu.ok ? gpu.body : null;
      clearFigures();
      const byKey = usageByKey(usage.body);
      renderNow(status.body, gpuBody, now);
      renderTimeline(status.body, gpuBody, gpu);
      renderSpend(status.body, gpuBody, gpu, keys.body, byKey);
      renderUsage(usage.body, byKey);
      renderAdvice(advices);
      const asOf = new Date().toLocaleTimeString("en-GB");
      $("stamp").textContent = `Figures as of ${asOf} (this month: ${monthStart} to `
        + `${utcDay(today)}, UTC). They refresh every minute.`;
      $("figures").hidden = false;
      $("forget").hidden = false;
      $("refresh").hidden = false;
      setState("ok", "Admin key accepted.");
      schedule();
    } catch (error) {
      if (mine !== generation) return;
      clearFigures();
      setState("error", `Could not load the figures: ${error.message}`);
      $("forget").hidden = false;
      $("refresh").hidden = false;
    }
  }

  function stop() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
  }

  function schedule() {
    stop();
    timer = setTimeout(load, REFRESH_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault(); // never submitted: the key stays out of URLs
      const input = $("key");
      const key = input.value.trim();
      input.value = "";
      if (key) sessionStorage.setItem(STORE, key);
      load();
    });
    $("refresh").addEventListener("click", load);
    $("forget").addEventListener("click", () => {
      sessionStorage.removeItem(STORE);
      stop();
      $("forget").hidden = true;
      $("refresh").hidden = true;
      load();
    });
    load();
  });
})();
