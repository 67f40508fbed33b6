// urbanbrain cockpit: the operator's view of the city, in plain JavaScript.
//
// Data flow: REST calls (docs/api.md) load the network and an initial snapshot; the
// /live WebSocket then pushes one `tick` per city second plus `kpi`, `decision` and
// `alert` messages; emergency vehicles (/api/emergency) are polled. Messages only update `state`; drawing happens at most once per
// animation frame (see scheduleRender), because with `--speed 0` the twin can send
// hundreds of ticks a second and repainting on each would freeze the page.
//
// Everything is built with DOM calls and textContent, never innerHTML with data, so
// ids and alert texts coming from the field cannot inject markup.

// ---------------------------------------------------------------- settings

const KEY_STORE = 'urbanbrain.apiKey';
const API_TIMEOUT_MS = 10_000;
const DEVICES_EVERY_MS = 10_000;
const HEALTH_EVERY_MS = 10_000;
const PANEL_EVERY_MS = 3_000;
const ALERTS_EVERY_MS = 30_000;
const INTERSECTIONS_EVERY_MS = 15_000; // who runs each signal (the supervisor) is not in the ticks: re-read it
const EMERGENCY_EVERY_MS = 2_000;      // emergency vehicles move: their positions are polled often
const STALE_AFTER_MS = 5_000;          // live feed open but silent this long: say so
const RECONNECT_MAX_MS = 30_000;
const KPI_WINDOW_S = 3 * 3600;         // charts show the last three city hours
const QUEUE_FULL_VEH = 20;             // top of the lane colour scale (and "20+")
const MARKER_R = 11;                   // marker ring radius, in screen pixels

// A cividis-like ramp (blue -> grey -> yellow): lightness rises with the queue, so it
// reads the same with any colour vision and in greyscale. It starts at a mid blue
// rather than cividis' navy so that empty lanes stay visible on the dark map.
const RAMP = ['#2b4272', '#4b5a76', '#77767a', '#a39a73', '#d3c163', '#fee838'];

// Okabe-Ito colours, safe for the common colour-vision deficiencies; each line also
// has its own dash pattern so the charts survive greyscale printing too.
const OI = { orange: '#E69F00', sky: '#56B4E9', green: '#009E73', yellow: '#F0E442', vermillion: '#D55E00', purple: '#CC79A7' };

const SVG_NS = 'http://www.w3.org/2000/svg';

// ---------------------------------------------------------------- state

const state = {
  key: null,
  running: false,
  network: null,
  inters: new Map(),      // id -> latest row (REST row merged with tick fields)
  laneQueue: new Map(),   // lane id -> queue (veh)
  kpis: [],               // rows of /api/kpis, sorted by minute
  alerts: new Map(),      // id -> alert
  devices: null,          // last /api/devices answer
  kpisLoaded: false,
  alertsLoaded: false,
  selected: null,         // selected intersection id
  selectedAlert: null,    // highlighted alert id (string)
  emergency: null,        // last /api/emergency answer
  selectedVehicle: null,  // highlighted emergency vehicle id
  detail: null,           // last GET /api/intersections/{id} of the selection
  detailAt: null,         // city time at which detail.time_in_phase_s was valid
  cityTime: null,
  timers: [],
};

const live = { ws: null, attempts: 0, retryAt: null, retryTimer: null, lastMsgAt: 0, dropped: false };
const dirty = { markers: new Set(), lanes: false, charts: false, panel: false, alerts: false, devices: false, emergency: false };

// ---------------------------------------------------------------- small helpers

const $ = (id) => document.getElementById(id);

/** Create an HTML element: h('p', {class: 'x'}, 'text', child, ...). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

/** Create an SVG element with attributes. */
function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  el.append(...children.filter((c) => c !== null && c !== undefined));
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
}

const pad2 = (n) => String(n).padStart(2, '0');

/** City seconds as HH:MM:SS. Scenario clocks count from midnight; a real city sends
 *  Unix time, which is shown in the browser's local time. */
function fmtClock(t, withSeconds = true) {
  if (t === null || t === undefined || !Number.isFinite(t)) return withSeconds ? '--:--:--' : '--:--';
  let hh, mm, ss, day = 0;
  if (t >= 1e9) {
    const d = new Date(t * 1000);
    [hh, mm, ss] = [d.getHours(), d.getMinutes(), d.getSeconds()];
  } else {
    day = Math.floor(t / 86400);
    const r = Math.floor(t - day * 86400);
    [hh, mm, ss] = [Math.floor(r / 3600), Math.floor((r % 3600) / 60), r % 60];
  }
  const text = withSeconds ? `${pad2(hh)}:${pad2(mm)}:${pad2(ss)}` : `${pad2(hh)}:${pad2(mm)}`;
  return day > 0 ? `day ${day + 1} ${text}` : text;
}

function fmtNum(v, digits = 1) {
  return v === null || v === undefined || !Number.isFinite(v) ? '—' : v.toFixed(digits);
}

function fmtDuration(sec) {
  if (!Number.isFinite(sec)) return '—';
  if (sec < 90) return `${Math.round(sec)} s`;
  if (sec < 5400) return `${Math.round(sec / 60)} min`;
  return `${(sec / 3600).toFixed(1)} h`;
}

function showMessage(id, text, kind = 'error') {
  const el = $(id);
  el.textContent = text || '';
  el.dataset.kind = kind;
}

// ---------------------------------------------------------------- API access

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** fetch() with the key, a timeout and readable errors. A 401 signs out, but only
 *  if it answers the key still in use (a late reply to an old key must not undo a
 *  fresh sign-in). */
async function api(path, { method = 'GET', body } = {}) {
  const key = state.key;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), API_TIMEOUT_MS);
  let res;
  try {
    const headers = { 'X-API-Key': key, Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    res = await fetch(path, {
      method, headers, cache: 'no-store', signal: abort.signal,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, err.name === 'AbortError' ? 'the server took too long to answer' : 'the server cannot be reached');
  } finally {
    clearTimeout(timer);
  }
  if (res.status === 401) {
    if (key === state.key) signOut('Your key was not accepted (401). Enter a valid API key.');
    throw new ApiError(401, 'not signed in');
  }
  if (!res.ok) throw new ApiError(res.status, await errorText(res));
  return res.status === 204 ? null : res.json();
}

/** The `detail` of a FastAPI error: a string, or a list of {field, error} items. */
async function errorText(res) {
  try {
    const data = await res.json();
    const d = data && data.detail;
    if (typeof d === 'string') return d;
    if (Array.isArray(d)) return d.map((e) => [e.field, e.error || e.msg].filter(Boolean).join(': ')).join('; ');
  } catch { /* not JSON: fall through */ }
  return `HTTP ${res.status}`;
}

function failText(what, err) {
  if (err.status === 403) return `Your key's role may not read ${what}.`;
  if (err.status) return `Could not load ${what} (${err.status}: ${err.message}).`;
  return `Could not load ${what}: ${err.message}.`;
}

// ---------------------------------------------------------------- sign-in

/** The key from `#key=...`, removed from the address bar so it does not linger in
 *  the history or get copied along with the URL. */
function keyFromFragment() {
  // Not URLSearchParams: it would turn a '+' in the key into a space.
  const match = /(?:^#|&)key=([^&]*)/.exec(location.hash);
  if (!match) return null;
  history.replaceState(null, '', location.pathname + location.search);
  let key = match[1];
  try { key = decodeURIComponent(key); } catch { /* keep it as typed */ }
  return key.trim() || null;
}

function showLogin(message) {
  const dialog = $('login');
  $('login-message').textContent = message || '';
  $('login-key').value = '';
  if (!dialog.open) dialog.showModal();
  $('login-key').focus();
}

function signOut(message) {
  stop();
  state.key = null;
  sessionStorage.removeItem(KEY_STORE);
  setConnection('signed-out', 'Signed out');
  showLogin(message);
}

async function start(key) {
  stop();
  state.key = key;
  state.running = true;
  sessionStorage.setItem(KEY_STORE, key);
  const dialog = $('login');
  if (dialog.open) dialog.close();
  setConnection('connecting', 'Connecting…');
  refreshHealth();

  // The network is needed first anyway, and its answer doubles as the key check: a
  // bad key gets one 401 (back to the form) instead of one per endpoint.
  if (state.network) await api('/api/alerts?status=new').catch(() => {});   // map kept from before
  else await loadNetwork();
  if (!state.running || state.key !== key) return;

  refreshIntersections();
  loadLaneQueues();
  loadKpis();
  refreshAlerts();
  refreshDevices();
  refreshEmergency();
  connectLive();
  state.timers.push(
    setInterval(refreshDevices, DEVICES_EVERY_MS),
    setInterval(refreshEmergency, EMERGENCY_EVERY_MS),
    setInterval(refreshHealth, HEALTH_EVERY_MS),
    setInterval(() => refreshPanel(), PANEL_EVERY_MS),
    setInterval(refreshAlerts, ALERTS_EVERY_MS),
    setInterval(refreshIntersections, INTERSECTIONS_EVERY_MS),
    setInterval(tickEverySecond, 1000),
  );
}

function stop() {
  state.running = false;
  state.timers.forEach(clearInterval);
  state.timers = [];
  clearTimeout(live.retryTimer);
  live.retryAt = null;
  const ws = live.ws;
  live.ws = null;           // detach first so onclose does not schedule a reconnect
  if (ws) ws.close();
}

// ---------------------------------------------------------------- header

function setConnection(kind, text) {
  const el = $('connection');
  el.dataset.state = kind;
  el.textContent = text;
}

function setCityTime(t) {
  if (!Number.isFinite(t)) return;
  state.cityTime = t;
  $('city-clock').textContent = fmtClock(t);
}

async function refreshHealth() {
  try {
    const res = await fetch('/health', { cache: 'no-store' });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const hdata = await res.json();
    $('twin-status').textContent = hdata.twin ?? '—';
    $('twin-status').dataset.twin = hdata.twin ?? '';
    $('twin-status').title = hdata.twin_error || '';
    // The live feed is the better clock; health only fills in before the first tick.
    if (hdata.city_time !== null && (!live.ws || Date.now() - live.lastMsgAt > STALE_AFTER_MS)) setCityTime(hdata.city_time);
  } catch {
    $('twin-status').textContent = 'unknown (no answer)';
    $('twin-status').dataset.twin = 'unknown';
  }
}

/** Once a second: connection wording (stale feed, reconnect countdown). */
function tickEverySecond() {
  if (live.ws && live.ws.readyState === WebSocket.OPEN) {
    const quiet = Date.now() - live.lastMsgAt;
    if (live.lastMsgAt && quiet > STALE_AFTER_MS) setConnection('stale', `Connected, no update for ${fmtDuration(quiet / 1000)}`);
  } else if (live.retryAt) {
    const sec = Math.max(0, Math.ceil((live.retryAt - Date.now()) / 1000));
    setConnection('offline', `Disconnected, retrying in ${sec} s`);
  }
}

// ---------------------------------------------------------------- live feed

function connectLive() {
  if (!state.running) return;
  live.retryAt = null;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const url = `${scheme}//${location.host}/live?key=${encodeURIComponent(state.key)}`;
  setConnection('connecting', live.attempts ? 'Reconnecting…' : 'Connecting…');
  let ws;
  try {
    ws = new WebSocket(url);
  } catch {
    scheduleReconnect();
    return;
  }
  live.ws = ws;
  ws.onopen = () => {
    if (live.ws !== ws) return;
    live.attempts = 0;
    live.lastMsgAt = Date.now();
    setConnection('live', 'Live');
    // Messages were missed while the feed was down: reload what they would have told us.
    if (live.dropped) {
      live.dropped = false;
      refreshIntersections();
      loadKpis();
      refreshAlerts();
    }
  };
  ws.onmessage = (ev) => {
    if (live.ws !== ws) return;
    live.lastMsgAt = Date.now();
    if ($('connection').dataset.state !== 'live') setConnection('live', 'Live');
    let msg;
    try { msg = JSON.parse(ev.data); } catch { return; }
    onLiveMessage(msg);
  };
  ws.onclose = (ev) => {
    if (live.ws !== ws) return;   // we closed it on purpose
    live.ws = null;
    live.dropped = true;
    // The service refuses a bad key with close code 4401 and a key whose role may not
    // read with 4403 (the browser hides HTTP statuses of WebSocket handshakes).
    if (ev.code === 4401) { signOut('Your key was not accepted (401). Enter a valid API key.'); return; }
    if (ev.code === 4403) { signOut("Your key's role may not view the cockpit. Use a viewer, operator or admin key."); return; }
    // 4429: this key has as many live streams open as the service allows (other tabs or
    // screens); retrying would only be refused again, so say it and wait for a reload.
    if (ev.code === 4429) { setConnection('offline', 'Too many open cockpits for this key: close another tab, then reload'); return; }
    // Otherwise a cheap REST call tells a revoked key (401 -> sign-in form) from a
    // server that is just down, then we retry.
    refreshAlerts();
    scheduleReconnect();
  };
}

function scheduleReconnect() {
  if (!state.running) return;
  // Exponential backoff with jitter, so a restarted server is not hit by every
  // cockpit at the same instant.
  const delay = Math.min(RECONNECT_MAX_MS, 1000 * 2 ** live.attempts) * (0.8 + Math.random() * 0.4);
  live.attempts += 1;
  live.retryAt = Date.now() + delay;
  tickEverySecond();
  clearTimeout(live.retryTimer);
  live.retryTimer = setTimeout(connectLive, delay);
}

function onLiveMessage(msg) {
  switch (msg.type) {
    case 'tick': {
      setCityTime(msg.time);
      for (const r of msg.intersections || []) mergeIntersection(r);
      if (msg.lanes) {
        for (const [id, q] of Object.entries(msg.lanes)) state.laneQueue.set(id, q);
        dirty.lanes = true;
      }
      updateDetailFromTick();
      break;
    }
    case 'kpi': {
      const { type, ...row } = msg;
      addKpis([row]);
      break;
    }
    case 'decision': {
      const { type, ...d } = msg;
      // The supervisor handed an intersection over (or back): its map marker changes.
      if (d.outcome === HANDED_OVER) refreshIntersectionsSoon();
      if (state.detail && d.intersection === state.selected) {
        const list = state.detail.decisions || (state.detail.decisions = []);
        if (!list.some((x) => sameDecision(x, d))) list.unshift(d);
        list.length = Math.min(list.length, 20);
        dirty.panel = true;
        refreshPanelSoon();
      }
      break;
    }
    case 'alert': {
      // An alert row has a `type` of its own (e.g. "incident") that clashes with the
      // message type: accept {"type": "alert", "alert": {...}} as well as a flat row.
      const { type, ...a } = msg;
      addAlert(msg.alert && typeof msg.alert === 'object' ? msg.alert : a);
      break;
    }
    default:
      // A flat alert whose own `type` overwrote "alert": recognise it by its fields.
      if (msg.id !== undefined && 'severity' in msg && 'status' in msg) addAlert(msg);
      else return;   // unknown message types are ignored: the API may grow
  }
  scheduleRender();
}

function addAlert(a) {
  if (a.id === undefined || a.id === null) return;
  state.alerts.set(a.id, a);
  dirty.alerts = true;
}

const sameDecision = (a, b) => a.time === b.time && a.phase === b.phase && a.outcome === b.outcome;

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    for (const id of dirty.markers) updateMarker(id);
    dirty.markers.clear();
    if (dirty.lanes) { dirty.lanes = false; paintLanes(); }
    if (dirty.charts) { dirty.charts = false; renderCharts(); }
    if (dirty.panel) { dirty.panel = false; renderPanelData(); }
    if (dirty.alerts) { dirty.alerts = false; renderAlerts(); renderAlertPins(); }
    if (dirty.devices) { dirty.devices = false; renderDevices(); }
    if (dirty.emergency) { dirty.emergency = false; renderEmergency(); renderVehicles(); }
  });
}

// ---------------------------------------------------------------- REST loads

async function loadNetwork() {
  if (state.network) return;
  showMessage('map-message', 'Loading network…', 'info');
  try {
    const net = await api('/api/network');
    state.network = net;
    $('city-name').textContent = net.name || '';
    document.title = `${net.name} · urbanbrain cockpit`;
    buildMap(net);
    showMessage('map-message', '');
  } catch (err) {
    if (err.status === 401 || !state.running) return;
    if (err.status === 403) {
      signOut("Your key's role may not view the cockpit. Use a viewer, operator or admin key.");
      return;
    }
    showMessage('map-message', `${failText('the network', err)} Retrying…`);
    retryLater(loadNetwork);
  }
}

/** Try `load` again in a few seconds, unless signed out (or signed in anew) meanwhile.
 *  The service answers 503 until its city is loaded, so first loads often need this. */
function retryLater(load, ms = 5000) {
  const key = state.key;
  setTimeout(() => state.running && state.key === key && load(), ms);
}

function mergeIntersection(r) {
  const row = state.inters.get(r.id) || {};
  state.inters.set(r.id, Object.assign(row, r));
  dirty.markers.add(r.id);
}

let intersectionsSoon = null;
/** Hand-overs come in bursts (an intersection and those it drains): re-read once after a pause. */
function refreshIntersectionsSoon() {
  clearTimeout(intersectionsSoon);
  intersectionsSoon = setTimeout(() => state.running && refreshIntersections(), 400);
}

async function refreshIntersections() {
  try {
    const rows = await api('/api/intersections');
    rows.forEach(mergeIntersection);
    if ($('map-message').dataset.kind === 'error' && state.network) showMessage('map-message', '');
    scheduleRender();
  } catch (err) {
    if (err.status === 401) return;
    showMessage('map-message', failText('the signal states', err));
    retryLater(refreshIntersections);
  }
}

/** Lane queues before the first tick; best effort, the feed fills them in anyway. */
async function loadLaneQueues() {
  try {
    const rows = await api('/api/lanes');
    for (const r of rows) if (!state.laneQueue.has(r.id)) state.laneQueue.set(r.id, r.queue);
    dirty.lanes = true;
    scheduleRender();
  } catch { /* the next tick brings them */ }
}

async function loadKpis() {
  const since = state.cityTime !== null ? state.cityTime - KPI_WINDOW_S : null;
  try {
    const rows = await api(since === null ? '/api/kpis' : `/api/kpis?since=${Math.floor(since)}`);
    state.kpisLoaded = true;
    addKpis(rows);
    showMessage('kpi-message', '');
  } catch (err) {
    if (err.status === 401) return;
    showMessage('kpi-message', `${failText('the KPIs', err)} Retrying…`);
    retryLater(loadKpis);
  }
}

function addKpis(rows) {
  const byMinute = new Map(state.kpis.map((r) => [r.minute, r]));
  for (const r of rows) if (Number.isFinite(r.minute)) byMinute.set(r.minute, r);
  let all = [...byMinute.values()].sort((a, b) => a.minute - b.minute);
  const last = all.length ? all[all.length - 1].minute : 0;
  all = all.filter((r) => r.minute >= last - KPI_WINDOW_S);
  state.kpis = all;
  dirty.charts = true;
  scheduleRender();
}

/** A refresh that sends one request at a time (a slow answer is not asked for again
 *  meanwhile): `apply` takes the answer; a failure, unless the key has expired (sign-out
 *  handles that), goes to the panel's message line, then `onFail` runs. */
function poller(path, messageId, what, apply, onFail = () => {}) {
  let busy = false;
  return async () => {
    if (busy) return;
    busy = true;
    try {
      const data = await api(path);
      showMessage(messageId, '');
      apply(data);
    } catch (err) {
      if (err.status !== 401) showMessage(messageId, failText(what, err));
      onFail();
    } finally {
      busy = false;
    }
  };
}

const refreshAlerts = poller('/api/alerts', 'alerts-message', 'alerts', (rows) => {
  const fresh = new Map(rows.map((a) => [a.id, a]));
  // Re-render only on a change, so a focused button is not replaced under the user.
  if (!state.alertsLoaded || JSON.stringify([...fresh]) !== JSON.stringify([...state.alerts])) {
    state.alerts = fresh;
    state.alertsLoaded = true;
    dirty.alerts = true;
    scheduleRender();
  }
});

const refreshDevices = poller('/api/devices', 'devices-message', 'devices', (rows) => {
  state.devices = rows;
  dirty.devices = true;
  scheduleRender();
}, () => { if (!state.devices) $('devices-body').replaceChildren(); });

const refreshEmergency = poller('/api/emergency', 'emergency-message', 'emergency vehicles', (data) => {
  // Re-render only on a change (they are polled every two seconds).
  if (JSON.stringify(data) !== JSON.stringify(state.emergency)) {
    state.emergency = data;
    dirty.emergency = true;
    scheduleRender();
  }
});

// ---------------------------------------------------------------- map

const map = {
  svg: null,
  home: null,        // the fitted viewBox
  view: null,        // the current viewBox {x, y, w, h}
  lanes: new Map(),  // lane id -> polyline (approach lanes only)
  markers: new Map(),// intersection id -> {g, x, y, ring, core, text, label, outline, lastState}
  edges: new Map(),  // edge id -> {x, y, nx, ny}: middle of its lane 0 (svg coords) and its right-hand normal
  pins: new Map(),   // alert id (string) -> {g, x, y}
  pinLayer: null,
  painted: new Map(),// lane id -> queue fraction last painted
  laneShapes: new Map(), // lane id -> {pts (svg coords), length_m}
  roadLanes: new Map(),  // edge id -> its lane ids, by index
  vehicles: new Map(),   // emergency vehicle id (and 'dest:' + id) -> {g, x, y}
  routeLayer: null,
  vehicleLayer: null,
};

/** Network coordinates have y up, SVG y down: every point goes through this. */
const toSvg = (x, y) => [x, -y];

/** The point half-way along a lane shape (network coords) in svg coords, with the unit
 *  normal to the right of the direction of travel there (svg y is down, so (-dy, dx)). */
function shapeMiddle(shape) {
  const pts = shape.map(([x, y]) => toSvg(x, y));
  const seg = pts.slice(1).map((p, i) => Math.hypot(p[0] - pts[i][0], p[1] - pts[i][1]));
  let rest = seg.reduce((a, b) => a + b, 0) / 2, i = 0;
  while (i < seg.length - 1 && rest > seg[i]) rest -= seg[i++];
  const [a, b] = [pts[i], pts[i + 1] || pts[i]];
  const len = seg[i] || 1, f = Math.min(rest / len, 1);
  const dx = (b[0] - a[0]) / len, dy = (b[1] - a[1]) / len;
  return { x: a[0] + (b[0] - a[0]) * f, y: a[1] + (b[1] - a[1]) * f, nx: -dy, ny: dx };
}

function buildMap(net) {
  const svg = $('map');
  map.svg = svg;
  svg.replaceChildren(hatchDefs());
  map.lanes.clear();
  map.markers.clear();
  map.painted.clear();
  map.edges.clear();
  map.laneShapes.clear();
  map.roadLanes.clear();

  const other = s('g', { class: 'lanes-other' });
  const approach = s('g', { class: 'lanes-approach' });
  for (const lane of net.lanes) {
    // SUMO lane ids are `<edge>_<index>`: remember each edge's middle, from lane 0 if
    // there is one (alerts name an edge, not a lane).
    const [, edge, index] = /^(.*)_(\d+)$/.exec(lane.id) || [];
    if (edge && (index === '0' || !map.edges.has(edge))) map.edges.set(edge, shapeMiddle(lane.shape));
    map.laneShapes.set(lane.id, { pts: lane.shape.map(([x, y]) => toSvg(x, y)), length_m: lane.length_m });
    if (edge) {
      const lanes = map.roadLanes.get(edge) || [];
      lanes[Number(index)] = lane.id;
      map.roadLanes.set(edge, lanes);
    }
    const pts = lane.shape.map(([x, y]) => toSvg(x, y).join(',')).join(' ');
    const line = s('polyline', { points: pts, class: lane.intersection ? 'lane lane-in' : 'lane lane-out' });
    if (lane.intersection) {
      line.append(s('title', {}, document.createTextNode(`${lane.id} → ${lane.intersection}`)));
      map.lanes.set(lane.id, line);
      approach.append(line);
    } else {
      other.append(line);
    }
  }
  const markers = s('g', { class: 'markers' });
  for (const it of net.intersections) {
    const m = makeMarker(it.id);
    [m.x, m.y] = toSvg(it.x, it.y);
    map.markers.set(it.id, m);
    markers.append(m.g);
  }
  map.pinLayer = s('g', { class: 'alert-pins' });   // on top of the intersections
  map.routeLayer = s('g', { class: 'ev-routes' });  // emergency routes over the lanes, under the markers
  map.vehicleLayer = s('g', { class: 'ev-vehicles' });
  svg.append(other, approach, map.routeLayer, markers, map.vehicleLayer, map.pinLayer);

  // Fit to the bounds with a margin, keeping the aspect ratio (preserveAspectRatio
  // "meet" centres it), so the city is never stretched.
  const [minx, miny, maxx, maxy] = net.bounds;
  const w = Math.max(maxx - minx, 1), hgt = Math.max(maxy - miny, 1);
  const padding = 0.06 * Math.max(w, hgt);
  map.home = { x: minx - padding, y: -maxy - padding, w: w + 2 * padding, h: hgt + 2 * padding };
  svg.setAttribute('preserveAspectRatio', 'xMidYMid meet');
  setView(map.home);

  for (const id of map.markers.keys()) updateMarker(id);
  paintLanes();
  renderAlertPins();
  renderVehicles();
  if (state.selected) selectIntersection(state.selected, { quiet: true });
}

/** Stripe patterns marking a controller not under normal control; the pattern is
 *  the non-colour cue (with the letter and the square outline). */
function hatchDefs() {
  const stripe = (id, bg, fg) => s('pattern', { id, width: 4, height: 4, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' },
    s('rect', { width: 4, height: 4, fill: bg }), s('rect', { width: 2, height: 4, fill: fg }));
  return s('defs', {}, stripe('hatch-flash', '#3b3505', OI.yellow), stripe('hatch-fallback', '#2a2f38', '#9aa4b2'));
}

function makeMarker(id) {
  const g = s('g', {
    class: 'marker', 'data-testid': `intersection-${id}`, 'data-id': id, tabindex: 0, role: 'button',
    'aria-pressed': 'false', 'data-signal-state': '', 'data-phase': '', 'data-controller': '',
  });
  const title = s('title');
  const halo = s('circle', { class: 'm-select', r: MARKER_R + 6 });
  const outline = s('rect', { class: 'm-outline', x: -(MARKER_R + 4), y: -(MARKER_R + 4), width: 2 * (MARKER_R + 4), height: 2 * (MARKER_R + 4), rx: 3 });
  const cycle = s('circle', { class: 'm-cycle', r: MARKER_R + 3.5 });   // beaded ring: the supervisor's actuated cycle runs it
  const ring = s('g', { class: 'm-ring' });
  const core = s('circle', { class: 'm-core', r: MARKER_R - 3 });
  const text = s('text', { class: 'm-text', 'text-anchor': 'middle', 'dominant-baseline': 'central' });
  const label = s('text', { class: 'm-label', y: MARKER_R + 14, 'text-anchor': 'middle' });
  g.append(title, halo, outline, cycle, ring, core, text, label);
  return { g, title, ring, core, text, label, outline, lastState: null, x: 0, y: 0 };
}

/** SUMO signal characters -> our looks. SUMO's 'o' is "off, blinking yellow" (what
 *  a controller in flash shows); 'O' is dark. */
function signalKind(c) {
  if ('GgsS'.includes(c)) return 'green';
  if ('yYu'.includes(c)) return 'yellow';
  if (c === 'o') return 'blink';
  if ('rR'.includes(c)) return 'red';
  return 'off';
}

/** One arc per signal group around the marker. Green arcs are drawn thick, yellow
 *  medium, blinking yellow dashed and red thin, so the ring reads without colour. */
function drawRing(ring, signal) {
  ring.replaceChildren();
  const n = signal.length;
  if (!n) return;
  const gap = Math.min(0.25, Math.PI / n / 2);
  for (let i = 0; i < n; i++) {
    const a0 = -Math.PI / 2 + (2 * Math.PI * i) / n + gap / 2;
    const a1 = -Math.PI / 2 + (2 * Math.PI * (i + 1)) / n - gap / 2;
    const p = (a) => `${(MARKER_R * Math.cos(a)).toFixed(2)} ${(MARKER_R * Math.sin(a)).toFixed(2)}`;
    const large = a1 - a0 > Math.PI ? 1 : 0;
    ring.append(s('path', { d: `M${p(a0)} A${MARKER_R} ${MARKER_R} 0 ${large} 1 ${p(a1)}`, class: `sg sg-${signalKind(signal[i])}` }));
  }
}

/** What a marker says in its centre: the green phase, Δ in a change interval, F when flashing. */
function markerText(row) {
  if (row.mode === 'flash') return 'F';
  if (row.phase !== null && row.phase !== undefined) return String(row.phase);
  if (row.signal_state) return 'Δ';
  return '?';
}

const HANDED_OVER = 'handed over';   // a decision-log outcome: the supervisor changed who runs an intersection

/** The supervisor's hand-over when the actuated cycle runs the intersection, else null. */
const cycleRun = (row) => (row && row.supervisor && row.supervisor.runs === 'cycle' ? row.supervisor : null);

const handOvers = (n) => `${n} hand-over${n === 1 ? '' : 's'}`;

/** 'actuated cycle until 29100 s (08:05:00)' (or 'brain'): who runs it, in words. */
function supervisorWords(sup, withClock = true) {
  if (!sup) return null;
  if (sup.runs !== 'cycle') return sup.runs ?? 'unknown';
  const until = Number.isFinite(sup.until) ? ` until ${Math.round(sup.until)} s${withClock ? ` (${fmtClock(sup.until)})` : ''}` : '';
  return `actuated cycle${until}`;
}

function describe(row) {
  const phase = row.phase !== null && row.phase !== undefined ? `green phase ${row.phase}`
    : row.mode === 'flash' ? 'flashing' : row.signal_state ? 'change interval' : 'no signal report';
  const cycle = cycleRun(row);
  const supervisor = cycle ? `, supervisor: ${supervisorWords(cycle)}, ${handOvers(cycle.losses ?? 0)}` : '';
  return `Intersection ${row.id}: ${phase}, field mode ${row.mode ?? 'unknown'}, controller ${row.controller ?? 'unknown'}${supervisor}, queue ${fmtNum(row.queue_veh)} veh`;
}

/** The marker's look for a row: the same code draws the map and the legend. */
function markerLook(m, row) {
  const look = row.mode === 'flash' ? 'flash' : row.mode === 'fallback' ? 'fallback' : 'normal';
  m.g.classList.toggle('is-flash', look === 'flash');
  m.g.classList.toggle('is-fallback', look === 'fallback');
  m.g.classList.toggle('is-cycle', Boolean(cycleRun(row)));
  m.g.classList.toggle('is-change', markerText(row) === 'Δ');
  m.text.textContent = markerText(row);
  return look;
}

function updateMarker(id) {
  const m = map.markers.get(id);
  const row = state.inters.get(id);
  if (!m || !row) return;
  const sig = row.signal_state ?? '';
  // These attributes are the contract with the browser tests: keep them exact.
  m.g.setAttribute('data-signal-state', sig);
  m.g.setAttribute('data-phase', row.phase === null || row.phase === undefined ? '' : String(row.phase));
  m.g.setAttribute('data-controller', row.controller ?? '');
  m.g.setAttribute('data-mode', row.mode ?? '');
  m.g.setAttribute('data-supervisor', row.supervisor ? row.supervisor.runs ?? '' : '');
  if (sig !== m.lastState) {
    drawRing(m.ring, sig);
    m.lastState = sig;
  }
  const look = markerLook(m, row);
  const tag = [row.controller && row.controller !== 'brain' ? row.controller : null, look === 'fallback' ? 'fallback' : null,
    cycleRun(row) ? 'cycle' : null].filter(Boolean).join(' · ');
  // Real networks have ids like 'cluster_306484187_cluster_...': shorten on the map only.
  const short = id.length > 16 ? `${id.slice(0, 14)}…` : id;
  m.label.textContent = tag ? `${short} · ${tag}` : short;
  const words = describe(row);
  m.title.textContent = words;
  m.g.setAttribute('aria-label', words);
}

/** Colour along RAMP for t in [0, 1]. */
function rampColour(t) {
  const x = Math.min(Math.max(t, 0), 1) * (RAMP.length - 1);
  const i = Math.min(Math.floor(x), RAMP.length - 2);
  const f = x - i;
  const a = hexRgb(RAMP[i]), b = hexRgb(RAMP[i + 1]);
  return `rgb(${a.map((v, k) => Math.round(v + (b[k] - v) * f)).join(',')})`;
}
const hexRgb = (hex) => [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));

function paintLanes() {
  for (const [id, line] of map.lanes) {
    const q = state.laneQueue.get(id);
    const t = Number.isFinite(q) ? Math.min(q / QUEUE_FULL_VEH, 1) : 0;
    if (map.painted.get(id) === t) continue;   // big networks: touch only what changed
    map.painted.set(id, t);
    line.style.stroke = rampColour(t);
    // Width grows with the queue too: a second, colour-free cue.
    line.style.strokeWidth = `${(1.6 + 3.4 * Math.min(t, 1)).toFixed(2)}px`;
  }
}

function setView(v) {
  map.view = v;
  map.svg.setAttribute('viewBox', `${v.x} ${v.y} ${v.w} ${v.h}`);
  rescaleMarkers();
}

/** Markers keep their size on screen whatever the zoom: scale each by the current
 *  metres-per-pixel (lanes do the same with vector-effect: non-scaling-stroke). */
function rescaleMarkers() {
  const ctm = map.svg && map.svg.getScreenCTM();
  if (!ctm || !ctm.a) return;
  const k = (1 / ctm.a).toFixed(5);
  for (const m of [...map.markers.values(), ...map.pins.values(), ...map.vehicles.values()]) m.g.setAttribute('transform', `translate(${m.x} ${m.y}) scale(${k})`);
}

function zoomAt(factor, cx, cy) {
  if (!map.view) return;
  const v = map.view;
  const w = Math.min(Math.max(v.w * factor, map.home.w / 40), map.home.w * 4);
  const f = w / v.w;
  // Keep the point under the cursor where it is: it is a fixed point of the scaling.
  setView({ x: cx - (cx - v.x) * f, y: cy - (cy - v.y) * f, w, h: v.h * f });
}

function clientToMap(clientX, clientY) {
  const p = new DOMPoint(clientX, clientY).matrixTransform(map.svg.getScreenCTM().inverse());
  return [p.x, p.y];
}

function centre() {
  return [map.view.x + map.view.w / 2, map.view.y + map.view.h / 2];
}

function setupMapInteraction() {
  const svg = $('map');
  svg.addEventListener('wheel', (e) => {
    if (!map.view) return;
    e.preventDefault();
    const [x, y] = clientToMap(e.clientX, e.clientY);
    zoomAt(Math.exp(Math.max(-1, Math.min(1, e.deltaY * 0.002))), x, y);
  }, { passive: false });

  // Drag to pan. A press that moves less than a few pixels stays a click.
  let drag = null, justDragged = false;
  svg.addEventListener('pointerdown', (e) => {
    if (e.button !== 0 || !map.view) return;
    drag = { x: e.clientX, y: e.clientY, view: map.view, k: svg.getScreenCTM().a, moving: false, id: e.pointerId };
  });
  svg.addEventListener('pointermove', (e) => {
    if (!drag || e.pointerId !== drag.id) return;
    const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
    if (!drag.moving && Math.hypot(dx, dy) < 4) return;
    if (!drag.moving) { drag.moving = true; svg.setPointerCapture(e.pointerId); svg.classList.add('panning'); }
    setView({ ...drag.view, x: drag.view.x - dx / drag.k, y: drag.view.y - dy / drag.k });
  });
  const endDrag = () => {
    if (drag && drag.moving) { justDragged = true; setTimeout(() => { justDragged = false; }, 0); }
    drag = null;
    svg.classList.remove('panning');
  };
  svg.addEventListener('pointerup', endDrag);
  svg.addEventListener('pointercancel', endDrag);

  // Alert pins, emergency vehicles and intersection markers, by mouse or keyboard.
  const activate = (target) => {
    const pin = target.closest && target.closest('.alert-pin');
    const ev = !pin && target.closest && target.closest('.ev-marker');
    const g = !pin && !ev && target.closest && target.closest('.marker');
    if (pin) selectAlert(pin.dataset.id);
    else if (ev) selectVehicle(ev.dataset.id);
    else if (g) selectIntersection(g.dataset.id);
    return Boolean(pin || ev || g);
  };
  svg.addEventListener('click', (e) => { if (!justDragged) activate(e.target); });
  svg.addEventListener('keydown', (e) => {
    if ((e.key === 'Enter' || e.key === ' ') && activate(e.target)) e.preventDefault();
  });

  $('zoom-in').addEventListener('click', () => map.view && zoomAt(0.7, ...centre()));
  $('zoom-out').addEventListener('click', () => map.view && zoomAt(1 / 0.7, ...centre()));
  $('zoom-fit').addEventListener('click', () => map.home && setView(map.home));
  new ResizeObserver(() => rescaleMarkers()).observe($('map-wrap'));
}

function buildLegend() {
  $('legend-ramp').style.background = `linear-gradient(to right, ${RAMP.join(', ')})`;
  const ticks = $('legend-ticks');
  ticks.replaceChildren(...[0, 5, 10, 15, 20].map((v) => h('span', {}, v === QUEUE_FULL_VEH ? `${v}+` : String(v))));

  // Sample markers drawn with the same code as the map's.
  const samples = [
    [{ phase: 1, signal_state: 'GGrr', mode: 'remote' }, 'green phase (number)'],
    [{ phase: null, signal_state: 'yyrr', mode: 'remote' }, 'change interval'],
    [{ phase: 0, signal_state: 'GGrr', mode: 'fallback' }, 'field fallback'],
    [{ phase: null, signal_state: 'oooo', mode: 'flash' }, 'flashing'],
    [{ phase: 2, signal_state: 'rrGG', mode: 'remote', supervisor: { runs: 'cycle' } }, 'actuated cycle (brain handed over)'],
  ];
  const box = $('legend-markers');
  box.replaceChildren(h('span', { class: 'legend-title' }, 'Signals'));
  for (const [row, words] of samples) {
    const m = makeMarker('legend');
    m.g.removeAttribute('data-testid');
    m.g.removeAttribute('tabindex');
    m.g.removeAttribute('role');
    m.label.remove();
    m.g.setAttribute('transform', 'translate(17 17)');
    drawRing(m.ring, row.signal_state);
    markerLook(m, row);
    box.append(h('span', { class: 'legend-item' },
      s('svg', { width: 24, height: 24, viewBox: '0 0 34 34', 'aria-hidden': 'true', class: 'legend-svg' }, m.g), words));
  }
  box.append(h('span', { class: 'legend-note', title: 'The ring has one arc per signal group' },
    'arcs: thick green · mid yellow · dashed blinking · thin red'));

  // Alert pins, drawn by the map's own code too.
  const pins = [[{ type: 'carAccident', severity: 'high', status: 'new' }, 'accident'],
    [{ type: 'carStopped', severity: 'medium', status: 'new' }, 'stopped car'],
    [{ type: 'carStopped', severity: 'medium', status: 'acknowledged' }, 'acknowledged']];
  $('legend').insertBefore(h('div', { class: 'legend-block' }, h('span', { class: 'legend-title' }, 'Alerts'),
    pins.map(([a, words]) => h('span', { class: 'legend-item' },
      s('svg', { width: 22, height: 22, viewBox: '-15 -15 30 30', 'aria-hidden': 'true', class: 'legend-svg' }, makeAlertPin(a)), words))),
  box);   // next to the queue ramp, where the first row has room

  // Emergency vehicles and their routes, drawn by the map's own code too.
  const sample = makeVehicleMarker({ vehicle: 'legend', service: 'ambulance', priority: 1 }, false);
  $('legend').append(h('div', { class: 'legend-block' }, h('span', { class: 'legend-title' }, 'Emergency'),
    h('span', { class: 'legend-item' },
      s('svg', { width: 24, height: 22, viewBox: '-16 -15 32 30', 'aria-hidden': 'true', class: 'legend-svg' }, sample), 'vehicle (A/F/P)'),
    h('span', { class: 'legend-item' },
      s('svg', { width: 30, height: 10, 'aria-hidden': 'true' },
        s('line', { x1: 1, x2: 29, y1: 5, y2: 5, class: 'ev-route-casing' }),
        s('line', { x1: 1, x2: 29, y1: 5, y2: 5, class: 'ev-route-line' })), 'planned route')));
}

// ---------------------------------------------------------------- KPI charts

/** Round step (1, 2 or 5 times a power of ten) giving about `count` intervals. */
function niceStep(range, count) {
  const raw = range / Math.max(count, 1);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 5 ? 5 : 10) * mag;
}

const TIME_STEPS = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];

/**
 * A small SVG line chart with axes, ticks and labels.
 * series: [{name, colour, dash, points: [[x, y], ...]}]; x is city time (s).
 * The y axis always starts at zero: all these KPIs are non-negative, and a
 * truncated axis would exaggerate small changes.
 */
function lineChart(svg, { series, width, height, emptyText = 'No data yet' }) {
  const M = { l: 42, r: 12, t: 10, b: 24 };
  const W = Math.max(width, 120), H = height;
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('width', W);
  svg.setAttribute('height', H);
  svg.replaceChildren();
  const pts = series.flatMap((sr) => sr.points);
  if (!pts.length) {
    svg.append(s('text', { x: W / 2, y: H / 2, class: 'chart-empty', 'text-anchor': 'middle' }, document.createTextNode(emptyText)));
    return;
  }
  let x0 = Math.min(...pts.map((p) => p[0])), x1 = Math.max(...pts.map((p) => p[0]));
  if (x1 - x0 < 600) { x1 = x0 + 600; }   // at least ten minutes wide
  const yMaxData = Math.max(...pts.map((p) => p[1]), 0);
  const yStep = niceStep(yMaxData || 1, 4);
  const y1 = Math.max(yStep, Math.ceil(yMaxData / yStep) * yStep);
  const sx = (x) => M.l + ((x - x0) / (x1 - x0)) * (W - M.l - M.r);
  const sy = (y) => H - M.b - (y / y1) * (H - M.t - M.b);

  const axes = s('g', { class: 'axis' });
  for (let i = 0; i * yStep <= y1 + 1e-9; i++) {   // by index: adding 0.2s up drifts
    const y = i * yStep;
    axes.append(s('line', { x1: M.l, x2: W - M.r, y1: sy(y), y2: sy(y), class: y === 0 ? 'baseline' : 'grid' }));
    axes.append(s('text', { x: M.l - 6, y: sy(y), 'text-anchor': 'end', 'dominant-baseline': 'middle' },
      document.createTextNode(yStep < 1 ? y.toFixed(1) : String(Math.round(y)))));
  }
  const maxTicks = Math.max(2, Math.floor((W - M.l - M.r) / 70));
  const xStep = TIME_STEPS.find((st) => (x1 - x0) / st <= maxTicks) || 86400;
  for (let x = Math.ceil(x0 / xStep) * xStep; x <= x1; x += xStep) {
    axes.append(s('line', { x1: sx(x), x2: sx(x), y1: H - M.b, y2: H - M.b + 4, class: 'tick' }));
    axes.append(s('text', { x: sx(x), y: H - M.b + 15, 'text-anchor': 'middle' }, document.createTextNode(fmtClock(x, false))));
  }
  svg.append(axes);

  for (const sr of series) {
    if (!sr.points.length) continue;
    const d = sr.points.map((p) => `${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(' ');
    svg.append(s('polyline', { points: d, class: 'series', stroke: sr.colour, 'stroke-dasharray': sr.dash || null }));
    const [lx, ly] = sr.points[sr.points.length - 1];
    svg.append(s('circle', { cx: sx(lx), cy: sy(ly), r: 2.5, fill: sr.colour, class: 'series-end' }));
  }
}

const CHARTS = [
  { id: 'chart-delay', title: 'Mean delay', unit: 's', series: [{ name: 'mean delay', field: 'mean_delay_s', colour: OI.orange, dash: null }] },
  { id: 'chart-throughput', title: 'Throughput', unit: 'veh/min', series: [{ name: 'throughput', field: 'throughput_veh', colour: OI.green, dash: null }] },
  { id: 'chart-vehicles', title: 'Vehicles', unit: 'veh', series: [
    { name: 'total', field: 'vehicles', colour: OI.sky, dash: null },
    { name: 'queued', field: 'queue_veh', colour: OI.purple, dash: '5 3' }] },
];

function buildCharts() {
  for (const c of CHARTS) {
    // The legend doubles as the read-out: each key shows its line style and latest value.
    c.values = [];
    const legend = h('span', { class: 'chart-legend' }, c.series.map((sr) => {
      const value = h('span', { class: 'chart-value' }, '—');
      c.values.push(value);
      return h('span', { class: 'key' },
        s('svg', { width: 18, height: 8, 'aria-hidden': 'true' },
          s('line', { x1: 1, x2: 17, y1: 4, y2: 4, stroke: sr.colour, 'stroke-width': 2.5, 'stroke-dasharray': sr.dash })),
        c.series.length > 1 ? `${sr.name} ` : '', value);
    }));
    c.svg = s('svg', { class: 'chart-svg', role: 'img', 'aria-label': `${c.title} chart` });
    $(c.id).replaceChildren(h('figcaption', {}, h('span', { class: 'chart-title' }, `${c.title} (${c.unit})`), legend), c.svg);
  }
  new ResizeObserver(() => { dirty.charts = true; scheduleRender(); }).observe(document.querySelector('.charts'));
}

function renderCharts() {
  const rows = state.kpis;
  const last = rows[rows.length - 1];
  $('kpi-latest').textContent = last ? `· latest minute ${fmtClock(last.minute, false)}` : '';
  for (const c of CHARTS) {
    const series = c.series.map((sr) => ({
      ...sr, points: rows.filter((r) => Number.isFinite(r[sr.field])).map((r) => [r.minute, r[sr.field]]),
    }));
    lineChart(c.svg, { series, width: Math.floor(c.svg.parentElement.clientWidth), height: 112, emptyText: state.kpisLoaded ? 'No data yet' : 'Loading…' });
    const values = c.series.map((sr) => (last ? fmtNum(last[sr.field], sr.field === 'throughput_veh' ? 0 : 1) : '—'));
    values.forEach((v, i) => { c.values[i].textContent = v; });
    const words = last ? c.series.map((sr, i) => `${sr.name} ${values[i]} ${c.unit}`).join(', ') : 'no data yet';
    c.svg.setAttribute('aria-label', `${c.title} per minute; latest: ${words}`);
  }
}

// ---------------------------------------------------------------- intersection panel

const panel = {};   // elements of the built panel

function selectIntersection(id, { quiet = false, reveal = false } = {}) {
  const alert = alertById(state.selectedAlert);
  if (alert && alert.intersection !== id) {
    state.selectedAlert = null;
    dirty.alerts = true;
    scheduleRender();
  }
  if (state.selected !== id) {
    state.detail = null;
    state.selected = id;
    buildPanel(id);
  }
  for (const [mid, m] of map.markers) {
    m.g.classList.toggle('selected', mid === id);
    m.g.setAttribute('aria-pressed', String(mid === id));
  }
  if (reveal) revealOnMap(id);
  if (!quiet) refreshPanel(true);
}

/** Pan the map to an intersection that lies outside the current view. */
function revealOnMap(id) {
  const m = map.markers.get(id);
  const v = map.view;
  if (!m || !v) return;
  const inside = m.x > v.x && m.x < v.x + v.w && m.y > v.y && m.y < v.y + v.h;
  if (!inside) setView({ ...v, x: m.x - v.w / 2, y: m.y - v.h / 2 });
}

function buildPanel(id) {
  $('panel-title').replaceChildren('Intersection ', h('span', { class: 'id-text' }, id));
  showMessage('panel-message', '');
  const fact = (label, key, attrs = {}) => {
    panel[key] = h('dd', attrs, '…');
    return h('div', {}, h('dt', {}, label), panel[key]);
  };
  panel.buttons = {};
  const controls = h('div', { class: 'segmented', role: 'group', 'aria-labelledby': 'controller-label' },
    ['brain', 'fixed', 'flash'].map((c) => {
      const b = h('button', {
        type: 'button', class: 'btn seg', 'data-testid': `control-${c}`, 'aria-pressed': 'false',
        onclick: () => setController(c),
      }, { brain: 'Brain', fixed: 'Fixed plan', flash: 'Flash' }[c]);
      panel.buttons[c] = b;
      return b;
    }));
  panel.controlMsg = h('p', { class: 'control-msg', role: 'status', 'data-testid': 'control-message' });
  panel.phases = h('ol', { class: 'phases' });
  panel.lanes = h('tbody');
  panel.decisions = h('ol', { class: 'decisions' });
  panel.signal = h('span', { class: 'signal-chips', 'aria-hidden': 'true' });
  $('panel-body').replaceChildren(
    h('dl', { class: 'facts' },
      fact('Phase', 'phase', { 'data-testid': 'panel-phase' }),
      fact('Time in phase', 'tip'),
      fact('Field mode', 'mode', { 'data-testid': 'panel-mode' }),
      fact('Controller', 'controller', { 'data-testid': 'panel-controller' }),
      fact('Queue', 'queue'),
      fact('Vehicles', 'vehicles'),
      h('div', { class: 'fact-wide', 'data-testid': 'panel-supervisor-fact' },
        h('dt', {}, 'Supervisor'),
        panel.supervisor = h('dd', { 'data-testid': 'panel-supervisor' }, '…'),
        panel.supervisorWhy = h('dd', { class: 'supervisor-why', 'data-testid': 'panel-supervisor-reason', hidden: true }))),
    h('div', { class: 'signal-now' }, h('span', { class: 'sub' }, 'Signals now'), panel.signal, panel.signalText = h('code', { 'data-testid': 'panel-signal-state' })),
    h('div', { class: 'control-box' },
      h('span', { class: 'sub', id: 'controller-label' }, 'Operator control'), controls, panel.controlMsg),
    h('h3', {}, 'Phases'), panel.phases,
    h('h3', {}, 'Lanes'),
    h('div', { class: 'table-wrap' }, h('table', { class: 'lanes' },
      h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Lane'), h('th', { scope: 'col' }, 'Queue'),
        h('th', { scope: 'col', title: 'vehicles on the lane' }, 'Veh'),
        h('th', { scope: 'col', title: 'vehicles approaching the stop line' }, 'Appr.'),
        h('th', { scope: 'col', title: 'flow, vehicles per hour' }, 'Flow/h'))),
      panel.lanes)),
    h('h3', {}, 'Recent decisions'), panel.decisions,
  );
  renderPanelData();
}

let panelBusy = false, panelSoon = null;
async function refreshPanel(force = false) {
  const id = state.selected;
  if (!id || (panelBusy && !force) || !state.running) return;
  panelBusy = true;
  try {
    const d = await api(`/api/intersections/${encodeURIComponent(id)}`);
    if (state.selected !== id) return;
    state.detail = d;
    state.detailAt = state.cityTime;
    mergeIntersection(Object.fromEntries(Object.entries(d).filter(([k]) => !['phases', 'lanes', 'decisions'].includes(k))));
    showMessage('panel-message', '');
    dirty.panel = true;
    scheduleRender();
  } catch (err) {
    if (err.status === 404) showMessage('panel-message', `Unknown intersection ${id}.`);
    else if (err.status !== 401) showMessage('panel-message', failText('this intersection', err));
  } finally {
    panelBusy = false;
  }
}

/** Decisions can come in bursts: refresh the panel once after a short pause. */
function refreshPanelSoon() {
  clearTimeout(panelSoon);
  panelSoon = setTimeout(() => refreshPanel(), 400);
}

/** Tick fields of the selected intersection go straight into the open panel. */
function updateDetailFromTick() {
  const d = state.detail;
  if (!d) return;
  const row = state.inters.get(d.id);
  if (!row) return;
  if (row.phase !== d.phase || row.signal_state !== d.signal_state) {
    // A new phase or interval began: restart its clock until the next REST refresh.
    d.time_in_phase_s = 0;
    state.detailAt = state.cityTime;
  }
  for (const k of ['phase', 'signal_state', 'mode', 'controller', 'queue_veh']) if (k in row) d[k] = row[k];
  dirty.panel = true;
}

function renderPanelData() {
  const id = state.selected;
  if (!id || !panel.phase) return;
  const d = state.detail;
  const row = d || state.inters.get(id) || { id };
  const phaseText = row.phase !== null && row.phase !== undefined ? String(row.phase)
    : row.mode === 'flash' ? 'flashing' : row.signal_state ? 'Δ change' : '—';
  panel.phase.textContent = phaseText;
  const tip = d && Number.isFinite(d.time_in_phase_s)
    ? d.time_in_phase_s + Math.max(0, (state.cityTime ?? 0) - (state.detailAt ?? state.cityTime ?? 0)) : null;
  panel.tip.textContent = tip === null ? '—' : `${Math.round(tip)} s`;
  panel.mode.textContent = row.mode ?? '—';
  panel.controller.textContent = row.controller ?? '—';
  panel.queue.textContent = `${fmtNum(row.queue_veh)} veh`;
  panel.vehicles.textContent = Number.isFinite(row.vehicles) ? `${fmtNum(row.vehicles)} veh` : '—';
  renderSupervisor(row.supervisor);
  for (const [c, b] of Object.entries(panel.buttons)) {
    b.setAttribute('aria-pressed', String(row.controller === c));
    b.classList.toggle('active', row.controller === c);
  }
  const sig = row.signal_state || '';
  panel.signalText.textContent = sig || '—';
  panel.signal.replaceChildren(...[...sig].map((c) => h('span', { class: `chip sg-${signalKind(c)}` })));

  if (!d) return;
  panel.phases.replaceChildren(...(d.phases || []).map((p) => {
    const current = p.index === row.phase;
    return h('li', { class: current ? 'current' : '', 'aria-current': current ? 'true' : null },
      h('span', { class: 'phase-index' }, String(p.index)),
      h('span', { class: 'signal-chips', 'aria-hidden': 'true' }, [...p.state].map((c) => h('span', { class: `chip sg-${signalKind(c)}` }))),
      h('code', {}, p.state),
      current ? h('span', { class: 'badge' }, 'current') : null);
  }));

  // `approaching`: vehicles on their way to the stop line (a number from the service).
  const lanes = [...(d.lanes || [])].sort((a, b) => (b.queue ?? 0) - (a.queue ?? 0) || String(a.id).localeCompare(String(b.id)));
  panel.lanes.replaceChildren(...lanes.map((l) => h('tr', {},
    h('th', { scope: 'row', title: l.id }, h('span', { class: 'qswatch', style: `background:${rampColour((l.queue || 0) / QUEUE_FULL_VEH)}` }), l.id),
    h('td', {}, fmtNum(l.queue)), h('td', {}, fmtNum(l.vehicles)),
    h('td', {}, typeof l.approaching === 'number' ? fmtNum(l.approaching) : '—'), h('td', {}, fmtNum(l.flow_vph, 0)))));
  if (!lanes.length) panel.lanes.replaceChildren(h('tr', {}, h('td', { colspan: 5, class: 'empty' }, 'No lane data.')));

  const decisions = d.decisions || [];
  panel.decisions.replaceChildren(...decisions.slice(0, 20).map((x) => h('li', { class: x.outcome === HANDED_OVER ? 'decision-handed-over' : null },
    h('div', { class: 'decision-head' },
      h('time', {}, fmtClock(x.time)),
      h('span', { class: `outcome outcome-${String(x.outcome).replace(/\s+/g, '-')}` }, x.outcome),
      x.phase !== null && x.phase !== undefined ? h('span', { class: 'muted' }, `→ phase ${x.phase}`) : null,
      x.controller ? h('span', { class: 'muted' }, `(${x.controller})`) : null),
    h('p', { class: 'reason' }, x.reason || '—'))));
  if (!decisions.length) panel.decisions.replaceChildren(h('li', { class: 'empty' }, 'No decisions yet.'));
}

/** Who runs the intersection (the supervisor's hand-over to the actuated cycle), and why. */
function renderSupervisor(sup) {
  const cycle = cycleRun({ supervisor: sup });
  panel.supervisor.classList.toggle('supervisor-cycle', Boolean(cycle));
  if (!sup) {
    panel.supervisor.textContent = '—';
    panel.supervisorWhy.hidden = true;
    panel.supervisorWhy.textContent = '';
    return;
  }
  const losses = sup.losses ?? 0;
  if (cycle) {
    panel.supervisor.textContent = `${supervisorWords(cycle, false)} (${handOvers(losses)})`;
  } else {
    panel.supervisor.textContent = losses ? `${supervisorWords(sup)} (${handOvers(losses)} so far)` : supervisorWords(sup);
  }
  const left = cycle && Number.isFinite(cycle.until) && Number.isFinite(state.cityTime) ? cycle.until - state.cityTime : null;
  const when = cycle && Number.isFinite(cycle.until)
    ? `Back to the brain at ${fmtClock(cycle.until)}${left !== null && left > 0 ? ` (in ${fmtDuration(left)})` : ''}, unless a vehicle still stands long at a stop line there. ` : '';
  const why = sup.reason ? `${when}${cycle ? 'Why: ' : ''}${sup.reason}` : when.trim();
  panel.supervisorWhy.textContent = why;
  panel.supervisorWhy.hidden = !why;
}

async function setController(controller) {
  const id = state.selected;
  if (!id) return;
  const buttons = Object.values(panel.buttons);
  buttons.forEach((b) => { b.disabled = true; });
  panel.controlMsg.dataset.kind = 'info';
  panel.controlMsg.textContent = `Switching ${id} to ${controller}…`;
  try {
    const row = await api(`/api/intersections/${encodeURIComponent(id)}/control`, { method: 'POST', body: { controller } });
    mergeIntersection(row);
    if (state.detail && state.detail.id === row.id) Object.assign(state.detail, row);
    panel.controlMsg.dataset.kind = 'ok';
    panel.controlMsg.textContent = `${id} is now on ${row.controller ?? controller}.`;
    dirty.panel = true;
    scheduleRender();
  } catch (err) {
    panel.controlMsg.dataset.kind = 'error';
    panel.controlMsg.textContent = err.status === 403 ? "Not allowed: your key's role may not do this."
      : err.status === 401 ? '' : `Could not switch the controller: ${err.message}.`;
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
  }
}

// ---------------------------------------------------------------- alerts

const SEVERITY_RANK = { critical: 0, high: 1, medium: 2, low: 3, info: 4 };
const STATUS_RANK = { new: 0, acknowledged: 1, resolved: 2 };
const ALERT_GLYPH = { carAccident: '!', carStopped: 'S', trafficJam: 'J' };
const RESOLVED_KEEP = 50;   // resolved alerts listed (newest first)

const alertById = (id) => (id === null || id === undefined ? null
  : [...state.alerts.values()].find((a) => String(a.id) === String(id)) || null);
const alertWhere = (a) => [a.edge ? `edge ${a.edge}` : null, a.intersection ? `→ ${a.intersection}` : null].filter(Boolean).join(' ');

/** The measurements that raised an alert, in a few words (`full`: all we know of). */
function evidenceText(ev, full = false) {
  if (!ev || typeof ev !== 'object') return '';
  const known = [
    ['vehicles_stopped', (v) => `vehicles stopped: ${v}`],
    ['overdue_s', (v) => `overdue ${Math.round(v)} s`],
    ['expected_s', (v) => `expected ${Math.round(v)} s`],
    ['overtaken_by', (v) => `overtaken by ${v}`],
  ];
  const parts = known.slice(0, full ? known.length : 2).filter(([k]) => Number.isFinite(ev[k])).map(([k, f]) => f(ev[k]));
  if (parts.length) return parts.join(', ');
  // Other alert types: their plain numbers and words, as sent.
  return Object.entries(ev).filter(([, v]) => ['number', 'string'].includes(typeof v))
    .slice(0, 4).map(([k, v]) => `${k.replace(/_/g, ' ')}: ${v}`).join(', ');
}

/** Open alerts first (new, then acknowledged), newest first; then the newest resolved. */
function sortedAlerts() {
  const all = [...state.alerts.values()].sort((a, b) =>
    (STATUS_RANK[a.status] ?? 1) - (STATUS_RANK[b.status] ?? 1)
    || (b.detected_at ?? 0) - (a.detected_at ?? 0) || (b.id ?? 0) - (a.id ?? 0));
  const open = all.filter((a) => a.status !== 'resolved');
  return { open, shown: open.concat(all.filter((a) => a.status === 'resolved').slice(0, RESOLVED_KEEP)) };
}

/** Highlight an alert (from its map pin or its row) and select its intersection. */
function selectAlert(id) {
  const a = alertById(id);
  if (!a) return;
  if (a.intersection) selectIntersection(a.intersection);
  state.selectedAlert = String(a.id);
  renderAlerts();
  renderAlertPins();
  $('alert-list').querySelector(`[data-testid="alert-${CSS.escape(String(a.id))}"]`)?.scrollIntoView({ block: 'nearest' });
}

function renderAlerts() {
  const list = $('alert-list');
  const { open, shown } = sortedAlerts();
  const fresh = open.filter((a) => a.status === 'new').length;
  $('alerts-count').textContent = state.alerts.size ? `${fresh} new / ${open.length} open` : '';
  if (!shown.length) {
    list.replaceChildren(h('li', { class: 'empty', 'data-testid': 'alerts-empty' }, 'No alerts'));
    return;
  }
  list.replaceChildren(...shown.map((a) => {
    const sev = String(a.severity ?? 'unknown').toLowerCase();
    const evidence = evidenceText(a.evidence);
    const body = [
      h('span', { class: 'alert-line' },
        h('span', { class: `sev sev-${SEVERITY_RANK[sev] ?? 'x'}` }, sev),
        h('strong', {}, a.type ?? 'alert'),
        h('time', { title: 'detected at (city time)' }, fmtClock(a.detected_at))),
      h('span', { class: 'alert-where' }, alertWhere(a) || '—'),
      evidence ? h('span', { class: 'alert-summary', title: evidenceText(a.evidence, true) }, evidence) : null,
    ];
    // The whole text is a button when it has a place to show, so it is keyboard-usable.
    const main = a.intersection
      ? h('button', { type: 'button', class: 'alert-main', title: `Show ${a.intersection} on the map`, onclick: () => { selectAlert(a.id); revealOnMap(a.intersection); } }, body)
      : h('div', { class: 'alert-main' }, body);
    const statusTip = a.status === 'acknowledged' ? `by ${a.acknowledged_by ?? '?'}`
      : a.status === 'resolved' ? `at ${fmtClock(a.resolved_at)}` : null;
    const side = h('div', { class: 'alert-side' },
      h('span', { class: `status status-${a.status}`, title: statusTip }, a.status ?? ''),
      a.status === 'resolved' && Number.isFinite(a.resolved_at) ? h('time', { class: 'status' }, fmtClock(a.resolved_at)) : null,
      a.status === 'new' ? h('button', { type: 'button', class: 'btn btn-small', 'data-testid': `ack-${a.id}`,
        'aria-label': `Acknowledge ${a.type ?? 'alert'} ${a.id}`, onclick: (e) => acknowledge(a.id, e.currentTarget) }, 'Acknowledge') : null);
    const selected = String(a.id) === state.selectedAlert;
    return h('li', { class: `alert alert-${a.status}${selected ? ' selected' : ''}`, 'data-testid': `alert-${a.id}`,
      'aria-current': selected ? 'true' : null }, main, side);
  }));
}

/** One map pin: a warning triangle for high severity, a diamond otherwise, with the
 *  type's letter inside, so neither shape nor letter relies on colour. Drawn in screen
 *  pixels, offset (dx, dy) from its road point, which a short leader line marks. */
function makeAlertPin(a, dx = 0, dy = 0) {
  const high = String(a.severity).toLowerCase() === 'high';
  const d = high ? 'M0 -12 L12 9 L-12 9 Z' : 'M0 -11 L11 0 L0 11 L-11 0 Z';
  return s('g', { class: `alert-pin pin-${high ? 'high' : 'medium'} pin-${a.status}` },
    dx || dy ? s('line', { class: 'pin-leader', x2: dx, y2: dy }) : null,
    dx || dy ? s('circle', { class: 'pin-foot', r: 2.5 }) : null,
    s('g', { transform: `translate(${dx} ${dy})` },
      s('path', { class: 'pin-halo', d, transform: 'scale(1.55)' }),
      s('path', { class: 'pin-shape', d }),
      s('text', { class: 'pin-text', y: high ? 3 : 0, 'text-anchor': 'middle', 'dominant-baseline': 'central' },
        document.createTextNode(ALERT_GLYPH[a.type] ?? '?'))));
}

/** Pins for the alerts that are not resolved, on the middle of their edge. */
function renderAlertPins() {
  if (!map.pinLayer) return;
  map.pins.clear();
  const perEdge = new Map();   // alerts already placed on an edge: stack the next one further out
  const pins = sortedAlerts().open.map((a) => {
    const road = map.edges.get(a.edge);
    const inter = map.markers.get(a.intersection);
    if (!road && !inter) return null;
    const n = perEdge.get(a.edge) ?? 0;
    perEdge.set(a.edge, n + 1);
    // Beside the road, on its right (the opposite direction's pins go to the other side);
    // with an unknown edge, above its intersection's marker.
    const off = 18 + 24 * n;
    const [dx, dy] = road ? [road.nx * off, road.ny * off] : [0, -(MARKER_R + 16 + 24 * n)];
    const g = makeAlertPin(a, dx, dy);
    const words = `${a.type ?? 'alert'}, severity ${a.severity ?? '?'}, ${a.status}; ${alertWhere(a)}; detected at ${fmtClock(a.detected_at)}`;
    const evidence = evidenceText(a.evidence, true);
    g.prepend(s('title', {}, document.createTextNode(evidence ? `${words}\n${evidence}` : words)));
    setAttrs(g, { 'data-testid': `alert-marker-${a.id}`, 'data-status': a.status, 'data-id': a.id,
      tabindex: 0, role: 'button', 'aria-label': `${words}. ${evidence}` });
    g.classList.toggle('selected', String(a.id) === state.selectedAlert);
    const pin = { g, x: road ? road.x : inter.x, y: road ? road.y : inter.y };
    map.pins.set(String(a.id), pin);
    return g;
  }).filter(Boolean);
  map.pinLayer.replaceChildren(...pins.reverse());   // the newest drawn last, on top
  rescaleMarkers();
}

async function acknowledge(id, button) {
  button.disabled = true;
  try {
    const a = await api(`/api/alerts/${encodeURIComponent(id)}/acknowledge`, { method: 'POST' });
    addAlert(a);
    showMessage('alerts-message', '');
    scheduleRender();
  } catch (err) {
    button.disabled = false;
    if (err.status === 403) showMessage('alerts-message', "Not allowed: your key's role may not do this.");
    else if (err.status === 409) { showMessage('alerts-message', 'That alert was no longer new.', 'info'); refreshAlerts(); }
    else if (err.status !== 401) showMessage('alerts-message', `Could not acknowledge: ${err.message}.`);
  }
}

// ---------------------------------------------------------------- devices

const DEVICE_KINDS = { emergency: 'transponders' };   // kinds whose plural is not kind + 's'

function renderDevices() {
  const devices = state.devices || [];
  const body = $('devices-body');
  if (!devices.length) {
    body.replaceChildren(h('p', { class: 'empty' }, 'No devices have reported yet.'));
    return;
  }
  const kinds = new Map();
  for (const d of devices) {
    const k = kinds.get(d.kind) || { total: 0, silent: 0 };
    k.total += 1;
    if (d.silent) k.silent += 1;
    kinds.set(d.kind, k);
  }
  const silent = devices.filter((d) => d.silent).sort((a, b) => (a.last_time ?? 0) - (b.last_time ?? 0));
  const counts = h('ul', { class: 'device-counts' }, [...kinds].sort().map(([kind, k]) => h('li', {},
    h('span', { class: 'n' }, String(k.total)), ` ${DEVICE_KINDS[kind] ?? `${kind}s`}`,
    k.silent ? h('span', { class: 'warn-text' }, `${k.silent} silent`) : h('span', { class: 'ok-text' }, 'all reporting'))));
  let detail;
  if (!silent.length) {
    detail = h('p', { class: 'all-ok', 'data-testid': 'devices-ok' }, h('span', { 'aria-hidden': 'true' }, '✓ '), 'all devices reporting');
  } else {
    const shown = silent.slice(0, 30);
    detail = h('div', {},
      h('h3', {}, `Silent devices (${silent.length})`),
      h('ul', { class: 'silent-list', 'data-testid': 'silent-devices' }, shown.map((d) => h('li', {},
        h('span', { class: 'warn-icon', 'aria-hidden': 'true' }, '!'),
        h('code', { class: 'dev-id', title: d.device_id }, d.device_id),
        d.status === 'missing'
          ? h('span', { class: 'seen', title: d.kind }, 'never heard from')
          : h('span', { class: 'seen', title: d.kind }, 'seen ', h('time', { datetime: d.last_seen_at ?? null, title: d.last_seen_at ?? '' }, fmtClock(d.last_time)),
            Number.isFinite(state.cityTime) && Number.isFinite(d.last_time) ? `, ${fmtDuration(state.cityTime - d.last_time)} ago` : '')))),
      silent.length > shown.length ? h('p', { class: 'muted' }, `and ${silent.length - shown.length} more`) : null);
  }
  const scrolled = body.querySelector('.silent-list')?.scrollTop ?? 0;
  body.replaceChildren(counts, detail);
  const list = body.querySelector('.silent-list');
  if (list) list.scrollTop = scrolled;
}

// ---------------------------------------------------------------- emergency vehicles

const SERVICE_LETTER = { ambulance: 'A', fire: 'F', police: 'P' };
const statusWords = (status) => String(status ?? '—').replace(/_/g, ' ');

/** Where a polyline (svg coords) is `dist` along it: the point, and the index of the vertex after it. */
function pointAlong(pts, dist) {
  for (let i = 1; i < pts.length; i++) {
    const [a, b] = [pts[i - 1], pts[i]];
    const seg = Math.hypot(b[0] - a[0], b[1] - a[1]);
    if (dist <= seg || i === pts.length - 1) {
      const f = seg ? Math.min(Math.max(dist / seg, 0), 1) : 0;
      return { p: [a[0] + (b[0] - a[0]) * f, a[1] + (b[1] - a[1]) * f], next: i };
    }
    dist -= seg;
  }
  return { p: pts[0], next: 1 };
}

const polylineLength = (pts) => pts.slice(1).reduce((sum, p, i) => sum + Math.hypot(p[0] - pts[i][0], p[1] - pts[i][1]), 0);

/** A vehicle's place on its lane (position from the lane's start, as its transponder
 *  reports it), with what is left of the lane ahead of it; null if the map lacks the lane. */
function vehiclePlace(v) {
  const lane = map.laneShapes.get(v.lane);
  if (!lane || lane.pts.length < 2) return null;
  const geometric = polylineLength(lane.pts);
  const share = lane.length_m > 0 ? Math.min(Math.max(v.position_m / lane.length_m, 0), 1) : 0;
  const { p, next } = pointAlong(lane.pts, share * geometric);
  return { x: p[0], y: p[1], ahead: [p, ...lane.pts.slice(next)] };
}

/** A road's centre line: its middle lane's shape (svg coords). */
function roadLine(edge) {
  const lanes = (map.roadLanes.get(edge) || []).filter(Boolean);
  const lane = map.laneShapes.get(lanes[Math.floor(lanes.length / 2)] ?? lanes[0]);
  return lane ? lane.pts : [];
}

/** The route still ahead, along the roads: from the vehicle, the rest of its road,
 *  then each road after it (the junctions between them as straight lines). */
function routeLine(v, place) {
  const route = v.route || [];
  const pts = [];
  route.forEach((edge, i) => pts.push(...(i === 0 && edge === v.edge && place ? place.ahead : roadLine(edge))));
  return pts;
}

/** An emergency vehicle on the map: a rounded badge (not a circle like the
 *  intersections, nor a triangle or diamond like the alerts) with its service's letter,
 *  labelled with its id and service. Drawn in screen pixels. */
function makeVehicleMarker(v, labelled = true) {
  const service = String(v.service ?? '');
  const g = s('g', { class: `ev-marker ev-${service}` });
  g.append(
    s('rect', { class: 'ev-halo', x: -17, y: -13, width: 34, height: 26, rx: 9 }),
    s('rect', { class: 'ev-body', x: -13, y: -9, width: 26, height: 18, rx: 6 }),
    s('text', { class: 'ev-text', 'text-anchor': 'middle', 'dominant-baseline': 'central' },
      document.createTextNode(`${SERVICE_LETTER[service] ?? '?'}${v.priority ?? ''}`)));
  if (labelled) {
    g.append(s('text', { class: 'ev-label', y: 24, 'text-anchor': 'middle' }, document.createTextNode(`${v.vehicle} · ${service}`)));
  }
  return g;
}

function vehicleWords(v) {
  return `Emergency vehicle ${v.vehicle}: ${v.service}, priority ${v.priority}, ${statusWords(v.status)} on ${v.edge}`
    + ` to ${v.destination}, ${fmtNum(v.speed_ms * 3.6, 0)} km/h`;
}

/** Markers and routes of the emergency vehicles under priority. */
function renderVehicles() {
  if (!map.vehicleLayer) return;
  map.vehicles.clear();
  const routes = [], marks = [];
  for (const v of state.emergency?.vehicles ?? []) {
    const place = vehiclePlace(v);
    const road = map.edges.get(v.edge);
    if (!place && !road) continue;
    const [x, y] = place ? [place.x, place.y] : [road.x, road.y];
    const selected = v.vehicle === state.selectedVehicle;
    const along = routeLine(v, place);
    const line = along.map((p) => p.map((c) => c.toFixed(2)).join(',')).join(' ');
    if (along.length > 1) {
      routes.push(s('g', { class: `ev-route${selected ? ' selected' : ''}`, 'data-testid': `emergency-route-${v.vehicle}`,
        'data-vehicle': v.vehicle, 'data-edges': (v.route || []).join(' ') },
      s('title', {}, document.createTextNode(`Route of ${v.vehicle}: ${(v.route || []).join(' → ')}`)),
      s('polyline', { class: 'ev-route-casing', points: line }),
      s('polyline', { class: 'ev-route-line', points: line })));
      const end = along.at(-1);
      const dest = s('g', { class: 'ev-dest' }, s('circle', { r: 5 }), s('circle', { r: 1.8, class: 'ev-dest-dot' }));
      map.vehicles.set(`dest:${v.vehicle}`, { g: dest, x: end[0], y: end[1] });
      marks.push(dest);
    }
    const g = makeVehicleMarker(v);
    g.prepend(s('title', {}, document.createTextNode(vehicleWords(v))));
    setAttrs(g, { 'data-testid': `emergency-vehicle-${v.vehicle}`, 'data-id': v.vehicle, 'data-edge': v.edge,
      tabindex: 0, role: 'button', 'aria-label': vehicleWords(v), 'aria-pressed': String(selected) });
    g.classList.toggle('selected', selected);
    map.vehicles.set(v.vehicle, { g, x, y });
    marks.push(g);
  }
  map.routeLayer.replaceChildren(...routes);
  map.vehicleLayer.replaceChildren(...marks);
  rescaleMarkers();
}

function selectVehicle(id, { reveal = false } = {}) {
  state.selectedVehicle = state.selectedVehicle === id && !reveal ? null : id;
  renderEmergency();
  renderVehicles();
  const m = map.vehicles.get(id);
  const v = map.view;
  if (reveal && m && v && !(m.x > v.x && m.x < v.x + v.w && m.y > v.y && m.y < v.y + v.h)) {
    setView({ ...v, x: m.x - v.w / 2, y: m.y - v.h / 2 });
  }
  $('emergency-body').querySelector(`[data-testid="emergency-row-${CSS.escape(id)}"]`)?.scrollIntoView({ block: 'nearest' });
}

/** The panel: vehicles under priority, the signals held for them now, and how long
 *  intersections took to recover once a vehicle had passed. */
function renderEmergency() {
  const data = state.emergency;
  if (!data) return;
  const vehicles = data.vehicles || [];
  const preemptions = data.preemptions || [];
  const held = preemptions.filter((p) => p.ended === null || p.ended === undefined);
  const ended = preemptions.filter((p) => Number.isFinite(p.ended)).length;
  $('emergency-count').textContent = vehicles.length
    ? `${vehicles.length} en route / ${held.length} signal${held.length === 1 ? '' : 's'} held` : '';

  const table = vehicles.length ? h('div', { class: 'table-wrap' }, h('table', { class: 'lanes ev-table' },
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Vehicle'), h('th', { scope: 'col' }, 'Service'),
      h('th', { scope: 'col', title: 'priority: 1 most urgent' }, 'Prio'), h('th', { scope: 'col' }, 'Status'),
      h('th', { scope: 'col', title: 'the road it is on → its destination' }, 'Road'))),
    h('tbody', {}, vehicles.map((v) => {
      const selected = v.vehicle === state.selectedVehicle;
      return h('tr', { 'data-testid': `emergency-row-${v.vehicle}`, class: selected ? 'selected' : '', 'aria-current': selected ? 'true' : null },
        h('th', { scope: 'row', title: v.vehicle }, h('button', { type: 'button', class: 'link-btn', title: `Show ${v.vehicle} on the map`,
          onclick: () => selectVehicle(v.vehicle, { reveal: true }) }, v.vehicle)),
        h('td', {}, v.service ?? '—'), h('td', {}, v.priority ?? '—'), h('td', {}, statusWords(v.status)),
        h('td', { class: 'ev-road', title: `${v.edge} → ${v.destination}` }, h('code', {}, v.edge ?? '—'), ` → ${v.destination ?? '—'}`));
    }))))
    : h('p', { class: 'empty', 'data-testid': 'emergency-empty' }, 'No emergency vehicle under priority.');

  const heldList = held.length
    ? h('ul', { class: 'ev-held', 'data-testid': 'emergency-preemptions' }, held.map((p) => h('li', {},
      h('code', { title: p.intersection }, p.intersection), h('span', {}, ` green ${p.phase} for `), h('strong', {}, p.vehicle),
      h('time', { class: 'muted', title: 'since (city time)' }, ` since ${fmtClock(p.started)}`))))
    : h('p', { class: 'empty' }, 'No signal held now.');
  const median = data.median_recovery_s;
  const recovery = h('p', { class: 'ev-recovery' }, 'Median recovery after a preemption: ',
    h('strong', { 'data-testid': 'emergency-median-recovery' }, Number.isFinite(median) ? fmtDuration(median) : '—'),
    h('span', { class: 'muted' }, ` (${ended} ended)`));
  // With nothing going on, one line (and the recovery figure once there is one), so
  // that the intersection panel above keeps its room.
  const quiet = !vehicles.length && !held.length;
  replaceKeepingScroll($('emergency-body'), table, quiet ? null : h('h3', {}, 'Preemptions in force'), quiet ? null : heldList,
    quiet && !ended ? null : recovery);
}

/** Replace a panel's content, keeping where its table was scrolled to. */
function replaceKeepingScroll(el, ...children) {
  const scrolled = el.querySelector('.table-wrap')?.scrollTop ?? 0;
  el.replaceChildren(...children.filter(Boolean));
  const wrap = el.querySelector('.table-wrap');
  if (wrap) wrap.scrollTop = scrolled;
}

// ---------------------------------------------------------------- boot

function boot() {
  setupMapInteraction();
  buildLegend();
  buildCharts();

  const dialog = $('login');
  dialog.addEventListener('cancel', (e) => e.preventDefault());   // no way around signing in
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const key = $('login-key').value.trim();
    if (key) start(key);
  });
  $('sign-out').addEventListener('click', () => signOut(''));
  // Pasting a new #key=... link into this tab switches to that key.
  window.addEventListener('hashchange', () => {
    const key = keyFromFragment();
    if (key) start(key);
  });

  const key = keyFromFragment() || sessionStorage.getItem(KEY_STORE);
  if (key) start(key);
  else {
    setConnection('signed-out', 'Signed out');
    showLogin('');
  }
}

boot();
