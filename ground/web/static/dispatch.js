// The dispatch page: drone list, map and events, kept current by the live feed (/api/live);
// order creation (drop point from the map, the recipient's photos) and operator commands,
// each sent with the page's CSRF token and shown as the drone answers it.
// Everything from outside (ids, phases, event kinds and details) is put in the page as text
// (textContent), never as markup.
"use strict";

const state = {
  drones: new Map(),     // drone_id -> DroneOut (latest: TrackPointOut)
  markers: new Map(),    // drone_id -> L.circleMarker
  selected: null,
  track: null,           // L.polyline of the selected drone
  extras: [],            // home / drop markers of the selected drone
  seen: new Set(),       // record ids already drawn (the live feed may repeat some)
  seenOrder: [],
  orders: [],            // OrderOut, newest first
  handovers: new Map(),  // order id -> its latest HandoverOut
  drop: null,            // L.circleMarker of the order being made
  commandTimer: null,    // the next look at the selected drone's unanswered commands
};
// Command states before the drone's answer.
const WAITING = ["sending", "sent", "unconfirmed"];
// Events that are steps of a hand-over (the orders table shows the latest).
const HANDOVER_STEPS = ["recipient-verdict", "recipient-pin", "released"];
// Order states in which a command is about that order (the drone refuses it for another).
const ACTIVE_ORDER = ["sent", "accepted", "flying"];
const SEEN_MAX = 20000;
let map;
let fitted = false;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

async function getJSON(path) {
  const response = await fetch(path, { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (response.status === 401) { window.location.assign("/login"); throw new Error("signed out"); }
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function firstSeen(id) {
  if (state.seen.has(id)) return false;
  state.seen.add(id);
  state.seenOrder.push(id);
  if (state.seenOrder.length > SEEN_MAX) state.seen.delete(state.seenOrder.shift());
  return true;
}

function fmt(value, unit) { return value === null || value === undefined ? "–" : `${value}${unit || ""}`; }

function renderDrones() {
  const body = document.querySelector("#drones tbody");
  body.replaceChildren();
  const ids = [...state.drones.keys()].sort();
  document.getElementById("no-drones").hidden = ids.length > 0;
  for (const id of ids) {
    const d = state.drones.get(id);
    const p = d.latest || {};
    const row = el("tr");
    row.dataset.drone = id;
    if (id === state.selected) row.classList.add("selected");
    row.append(
      el("td", id),
      el("td", d.liveness, d.liveness),
      el("td", fmt(p.phase)),
      el("td", fmt(p.battery_pct, " %")),
      el("td", fmt(p.link_rssi_dbm, " dBm")),
      el("td", p.gps_fix === undefined ? "–" : `fix ${p.gps_fix}${p.gps_alarms && p.gps_alarms.length ? " ALARM" : ""}`),
    );
    row.addEventListener("click", () => select(id));
    body.append(row);
    placeMarker(d);
  }
}

function placeMarker(d) {
  const p = d.latest;
  if (!p || p.lat === null || p.lon === null) return;
  const colour = d.online ? "#2e8b57" : "#a33";
  let marker = state.markers.get(d.drone_id);
  if (!marker) {
    marker = L.circleMarker([p.lat, p.lon], { radius: 8, className: "drone-marker", color: colour, fillOpacity: 0.8 });
    marker.bindTooltip(el("span", d.drone_id), { permanent: true, direction: "right" });
    marker.on("click", () => select(d.drone_id));
    marker.addTo(map);
    state.markers.set(d.drone_id, marker);
  }
  marker.setLatLng([p.lat, p.lon]);
  marker.setStyle({ color: colour });
  marker.getElement()?.setAttribute("data-drone", d.drone_id);
  if (!fitted) { map.setView([p.lat, p.lon], 16); fitted = true; }
}

function csrf() { return document.body.dataset.csrf; }

async function post(path, body) {
  const json = !(body instanceof FormData);
  const headers = { Accept: "application/json", "X-CSRF-Token": csrf() };
  if (json) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: "POST", credentials: "same-origin", headers, body: json ? JSON.stringify(body) : body,
  });
  if (response.status === 401) { window.location.assign("/login"); throw new Error("signed out"); }
  const answer = await response.json().catch(() => ({}));
  return { ok: response.ok, status: response.status, body: answer };
}

function reasonText(detail) {
  // FastAPI's 422 is a list of {loc, msg}; our own refusals are a sentence.
  if (Array.isArray(detail)) return detail.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
  return String(detail === undefined ? "no answer" : detail);
}

function orderNote(o) {
  if (o.outcome) return o.outcome;
  const d = o.detail || {};
  return d.message || d.error || "–";
}

function handoverText(step) {
  if (!step) return "–";
  if (step.step === "released") return "parcel released";
  const what = step.step === "recipient-pin" ? "PIN" : "face";
  return `${what} ${step.outcome}${step.why ? ` (${step.why})` : ""}`;
}

function renderOrders(orders) {
  state.orders = orders;
  const body = document.querySelector("#orders tbody");
  body.replaceChildren(...orders.map((o) => {
    const row = el("tr");
    row.dataset.order = o.order_id;
    const link = el("button", "Link");
    link.type = "button";
    link.title = "the recipient's tracking link";
    link.addEventListener("click", (event) => { event.stopPropagation(); trackingLink(o.order_id); });
    const action = el("td");
    action.append(link);
    const step = state.handovers.get(o.order_id);
    const handover = handoverText(step);
    row.append(el("td", o.order_id), el("td", o.drone_id), el("td", o.state, `state ${o.state}`),
      el("td", orderNote(o), "outcome"), el("td", handover, "handover"), action);
    row.addEventListener("click", () => select(o.drone_id));
    return row;
  }));
}

async function trackingLink(orderId) {
  const out = document.getElementById("tracking-link");
  const answer = await post("/api/tracking-links", { order_id: orderId });
  out.replaceChildren();
  if (!answer.ok) { out.textContent = `no link: ${reasonText(answer.body.detail)}`; return; }
  const a = el("a", `${window.location.origin}${answer.body.path}`);
  a.href = answer.body.path;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  out.append(`Tracking link for ${orderId}: `, a);
}

// -- making an order ------------------------------------------------------------------------

function setDrop(lat, lon, fill) {
  if (!Number.isFinite(lat) || !Number.isFinite(lon)) return;
  const form = document.getElementById("order-form");
  if (fill) {
    form.elements.lat.value = lat.toFixed(7);
    form.elements.lon.value = lon.toFixed(7);
  }
  if (!state.drop) {
    state.drop = L.circleMarker([lat, lon], { radius: 7, className: "new-drop-marker", color: "#d2691e" })
      .bindTooltip(el("span", "new drop")).addTo(map);
  }
  state.drop.setLatLng([lat, lon]);
}

async function submitOrder(event) {
  event.preventDefault();
  const form = event.target;
  const result = document.getElementById("order-result");
  const button = document.getElementById("dispatch-order");
  const data = new FormData();
  data.append("csrf", csrf());
  data.append("drone_id", form.elements.drone_id.value);
  data.append("lat", form.elements.lat.value);
  data.append("lon", form.elements.lon.value);
  for (const file of form.elements.photo.files) data.append("photo", file, file.name);
  if (form.elements.pin.value) data.append("pin", form.elements.pin.value);
  data.append("valid_s", String(Math.round(Number(form.elements.valid_h.value) * 3600)));
  result.className = "";
  result.textContent = "signing and sending…";
  button.disabled = true;
  try {
    const answer = await post("/api/orders", data);
    if (answer.ok) {
      result.textContent = `order ${answer.body.order_id}: ${answer.body.state}`;
      result.className = answer.body.state;
      form.elements.photo.value = "";
    } else {
      result.textContent = `refused: ${reasonText(answer.body.detail)}`;
      result.className = "error";
    }
  } finally {
    button.disabled = false;
  }
  refresh();
}

function listDrones(ids) {
  const select = document.getElementById("order-form").elements.drone_id;
  const chosen = select.value;
  select.replaceChildren(...ids.map((id) => {
    const option = el("option", id);
    option.value = id;
    return option;
  }));
  if (ids.includes(chosen)) select.value = chosen;
}

async function registerDrone(event) {
  event.preventDefault();
  const form = event.target;
  const result = document.getElementById("register-result");
  const data = new FormData();
  data.append("csrf", csrf());
  const [file] = form.elements.public.files;
  if (!file) return;
  data.append("public", file, file.name);
  const answer = await post("/api/drones", data);
  if (answer.ok) {
    result.className = "accepted";
    result.textContent = `${answer.body.drone_id} registered (identity ${answer.body.fingerprints.identity})`;
    form.elements.public.value = "";
    listDrones((await getJSON("/api/dispatch")).drones);
  } else {
    result.className = "error";
    result.textContent = `refused: ${reasonText(answer.body.detail)}`;
  }
}

async function setupDispatch() {
  const info = await getJSON("/api/dispatch");
  const form = document.getElementById("order-form");
  const register = document.getElementById("register-form");
  document.getElementById("dispatch-off").hidden = info.enabled;
  form.hidden = !info.enabled;
  register.hidden = !info.enabled;
  if (!info.enabled) return;
  listDrones(info.drones);
  register.addEventListener("submit", registerDrone);
  form.addEventListener("submit", submitOrder);
  map.on("click", (e) => setDrop(e.latlng.lat, e.latlng.lng, true));
  for (const name of ["lat", "lon"]) {
    form.elements[name].addEventListener("change", () =>
      setDrop(Number(form.elements.lat.value), Number(form.elements.lon.value), false));
  }
  for (const button of document.querySelectorAll("#commands button[data-command]")) {
    button.addEventListener("click", () => sendCommand(button.dataset.command));
  }
}

// -- operator commands ----------------------------------------------------------------------

function activeOrder(droneId) {
  const found = state.orders.find((o) => o.drone_id === droneId && ACTIVE_ORDER.includes(o.state));
  return found ? found.order_id : null;
}

async function sendCommand(command) {
  const id = state.selected;
  if (!id) return;
  if (command === "abort" && !window.confirm(`Abort ${id}'s delivery and fly it home?`)) return;
  const result = document.getElementById("command-result");
  result.className = "";
  result.textContent = `sending ${command}…`;
  const answer = await post(`/api/drones/${encodeURIComponent(id)}/commands`,
    { command, order_id: activeOrder(id) });
  if (answer.ok) {
    result.textContent = `${command}: ${answer.body.state}, waiting for the drone`;
  } else {
    result.textContent = `${command} refused: ${reasonText(answer.body.detail)}`;
    result.className = "error";
  }
  loadCommands(id);
}

async function loadCommands(id) {
  const commands = await getJSON(`/api/drones/${encodeURIComponent(id)}/commands`);
  if (id !== state.selected) return;
  // The live feed may bring the drone's answer before this instance's store holds it: ask
  // again while a command still waits for its answer and may still be acted on.
  clearTimeout(state.commandTimer);
  const now = Date.now();
  if (commands.some((c) => WAITING.includes(c.state) && new Date(c.expires_at) > now)) {
    state.commandTimer = setTimeout(() => loadCommands(id), 2000);
  }
  const newest = commands[0];
  if (newest && (newest.state === "accepted" || newest.state === "refused")) {
    const result = document.getElementById("command-result");
    result.className = newest.state;
    result.textContent = `${newest.command}: ${newest.state} by the drone`;
  }
  document.getElementById("command-log").replaceChildren(...commands.map((c) => {
    const item = el("li");
    item.dataset.commandId = c.command_id;
    item.dataset.command = c.command;
    const why = c.message ? ` (${c.message})` : "";
    item.append(el("time", new Date(c.issued_at).toLocaleTimeString()), " ", el("strong", c.command),
      ` by ${c.issued_by}: `, el("span", c.state, `state ${c.state}`), why);
    return item;
  }));
}

function addEvent(e) {
  const item = el("li");
  item.append(el("time", new Date(e.t).toLocaleTimeString()), " ", el("strong", e.kind), " ",
    el("span", e.phase || ""), " ", el("span", e.mission_id || "", "muted"), " ",
    el("code", JSON.stringify(e.detail)));
  document.getElementById("events").append(item);
  const drop = e.kind === "enter" && Array.isArray(e.detail.drop) ? e.detail.drop : null;
  if (drop && drop.length === 2 && drop.every(Number.isFinite)) {
    const m = L.circleMarker(drop, { radius: 6, className: "drop-marker", color: "#8a2be2" }).bindTooltip(el("span", "drop"));
    state.extras.push(m.addTo(map));
  }
}

async function select(id) {
  state.selected = id;
  document.getElementById("selected").textContent = `(${id})`;
  renderDrones();
  for (const m of state.extras) m.remove();
  state.extras = [];
  if (state.track) state.track.remove();
  const [points, events] = await Promise.all([
    getJSON(`/api/drones/${encodeURIComponent(id)}/track`),
    getJSON(`/api/drones/${encodeURIComponent(id)}/events`),
  ]);
  const line = points.filter((p) => p.lat !== null && p.lon !== null).map((p) => [p.lat, p.lon]);
  state.track = L.polyline(line, { className: "track-line", color: "#1f6fb2" }).addTo(map);
  if (line.length) {
    const home = L.circleMarker(line[0], { radius: 5, className: "home-marker", color: "#333" }).bindTooltip(el("span", "start"));
    state.extras.push(home.addTo(map));
    map.fitBounds(state.track.getBounds(), { maxZoom: 18, padding: [30, 30] });
  }
  document.getElementById("events").replaceChildren();
  events.forEach(addEvent);
  const commands = document.getElementById("commands");
  commands.hidden = document.getElementById("order-form").hidden;
  if (!commands.hidden) loadCommands(id);
}

async function refresh() {
  const [drones, orders, handovers] = await Promise.all(
    [getJSON("/api/drones"), getJSON("/api/orders"), getJSON("/api/handovers")]);
  state.drones = new Map(drones.map((d) => [d.drone_id, d]));
  state.handovers = new Map(handovers.filter((h) => h.mission_id).map((h) => [h.mission_id, h]));
  renderDrones();
  renderOrders(orders);
}

function onRecords(batch) {
  for (const p of batch.telemetry) {
    if (!firstSeen(p.record_id)) continue;
    const d = state.drones.get(p.drone_id) || { drone_id: p.drone_id, online: true, liveness: "online", latest: null };
    if (!d.latest || new Date(p.t) >= new Date(d.latest.t)) d.latest = p;
    state.drones.set(p.drone_id, d);
    if (p.drone_id === state.selected && state.track && p.lat !== null) state.track.addLatLng([p.lat, p.lon]);
  }
  for (const s of batch.statuses) {
    const d = state.drones.get(s.drone_id);
    if (d) { d.online = s.state === "online"; d.liveness = s.state; }
  }
  for (const e of batch.events) {
    if (firstSeen(e.record_id) && e.drone_id === state.selected) addEvent(e);
  }
  if (batch.events.some((e) => e.drone_id === state.selected && e.kind.startsWith("command-"))) {
    loadCommands(state.selected);
  }
  renderDrones();
  const changes = (e) => e.kind.startsWith("order-") || HANDOVER_STEPS.includes(e.kind);
  if (batch.events.some(changes) || batch.statuses.length) refresh();
}

function connect() {
  const badge = document.getElementById("live-state");
  const source = new EventSource("/api/live");
  source.onopen = () => { badge.textContent = "live"; badge.classList.add("live"); };
  source.onerror = () => { badge.textContent = "reconnecting…"; badge.classList.remove("live"); };
  source.addEventListener("records", (msg) => onRecords(JSON.parse(msg.data)));
  source.addEventListener("resync", () => refresh());
  source.addEventListener("expired", () => { source.close(); window.location.assign("/login"); });
}

function start() {
  map = L.map("map", { zoomControl: true }).setView([0, 0], 2);
  const tiles = document.body.dataset.tiles;
  if (tiles) L.tileLayer(tiles, { maxZoom: 19 }).addTo(map);
  // The live feed starts whatever the first reads gave: a failed one is tried again below.
  setupDispatch().catch(console.error).finally(() => refresh().catch(console.error).finally(connect));
  // Liveness runs out by time (the status's time-to-live): ask the server again now and then.
  setInterval(refresh, 10000);
}

document.addEventListener("DOMContentLoaded", start);
