// The dispatch page: drone list, map and events, kept current by the live feed (/api/live).
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
};
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

function renderOrders(orders) {
  const body = document.querySelector("#orders tbody");
  body.replaceChildren(...orders.map((o) => {
    const row = el("tr");
    row.append(el("td", o.order_id), el("td", o.drone_id), el("td", o.state), el("td", fmt(o.outcome)));
    return row;
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
    map.fitBounds(state.track.getBounds(), { maxZoom: 17, padding: [30, 30] });
  }
  document.getElementById("events").replaceChildren();
  events.forEach(addEvent);
}

async function refresh() {
  const [drones, orders] = await Promise.all([getJSON("/api/drones"), getJSON("/api/orders")]);
  state.drones = new Map(drones.map((d) => [d.drone_id, d]));
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
  renderDrones();
  if (batch.events.some((e) => e.kind.startsWith("order-")) || batch.statuses.length) refresh();
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
  refresh().then(connect);
  // Liveness runs out by time (the status's time-to-live): ask the server again now and then.
  setInterval(refresh, 10000);
}

document.addEventListener("DOMContentLoaded", start);
