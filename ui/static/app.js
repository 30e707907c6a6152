// Muster dashboard. Plain JavaScript, no build step.
//
// Everything that comes from etcd is put into the page with textContent (via
// el() and text nodes), never by parsing HTML: a tag value
// "<script>alert(1)</script>" shows as those characters.
'use strict';

const MAX_ROWS = 200;      // instance rows rendered at once
const MAX_SERVICES = 300;  // service rows rendered at once (layout cost grows with rows)
const TIMELINE_SIZE = 200; // as the server's ring

const S = {
  epoch: '',
  seq: 0,
  skew: 0,                 // server clock - browser clock, ms
  started: 0,
  prefix: '',
  revision: 0,
  skipped: 0,
  instances: new Map(),    // "service\u0000id" -> instance
  leases: new Map(),       // lease hex -> {ttl, granted, at}
  timeline: [],            // oldest first
  health: null,
  hasStats: false,
  stats: [],               // samples, oldest first
  selected: '',            // '' = all services
  filter: '',
  flash: new Set(),        // keys added or updated since the last render
};

// el builds an element; string children become text nodes.
function el(tag, props, ...children) {
  const e = document.createElement(tag);
  if (props) {
    for (const [k, v] of Object.entries(props)) {
      if (v === undefined || v === null) continue;
      if (k === 'className') e.className = v;
      else if (k === 'title') e.title = v;
      else if (k === 'dataset') Object.assign(e.dataset, v);
      else if (k === 'onclick') e.addEventListener('click', v);
      else e.setAttribute(k, String(v));
    }
  }
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    e.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
  }
  return e;
}

function replaceRows(tbody, rows) {
  const frag = document.createDocumentFragment();
  for (const r of rows) frag.appendChild(r);
  tbody.replaceChildren(frag);
}

const key = (i) => i.service + '\u0000' + i.id;
const byServiceID = (a, b) =>
  a.service < b.service ? -1 : a.service > b.service ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
const now = () => Date.now() + S.skew;

function fmtDuration(ms) {
  let s = Math.max(0, Math.floor(ms / 1000));
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return d + 'd' + h + 'h';
  if (h) return h + 'h' + m + 'm';
  if (m) return m + 'm' + s + 's';
  return s + 's';
}
function fmtBytes(n) {
  if (!n) return '0 B';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
}
function fmtTime(ms) {
  const d = new Date(ms - S.skew);
  return d.toLocaleTimeString([], {hour12: false});
}

// ---- state and events ----

function applyState(st) {
  S.epoch = st.epoch;
  S.seq = st.seq;
  S.skew = st.now - Date.now();
  S.started = st.started;
  S.prefix = st.prefix;
  S.revision = st.revision;
  S.skipped = st.skipped;
  S.instances = new Map(st.instances.map((i) => [key(i), i]));
  S.leases = new Map(Object.entries(st.leases || {}));
  S.timeline = st.timeline || [];
  S.health = st.health;
  S.hasStats = st.hasStats;
  S.stats = st.stats || [];
  render();
}

function applyDelta(d) {
  S.seq = Math.max(S.seq, d.seq);
  S.revision = d.revision;
  S.skipped = d.skipped;
  for (const c of d.changes) {
    const k = key(c.instance);
    if (c.kind === 'removed') {
      S.instances.delete(k);
    } else {
      const old = S.instances.get(k);
      // A lease already learnt stays until the next "leases" event says otherwise.
      if (old && !c.instance.lease && old.lease) {
        c.instance.lease = old.lease;
        c.instance.createRevision = old.createRevision;
      }
      S.instances.set(k, c.instance);
      S.flash.add(k);
    }
  }
  for (const t of d.timeline || []) S.timeline.push(t);
  if (S.timeline.length > TIMELINE_SIZE) S.timeline.splice(0, S.timeline.length - TIMELINE_SIZE);
  scheduleRender();
}

function applyLeases(l) {
  S.seq = Math.max(S.seq, l.seq);
  for (const i of l.instances || []) {
    const inst = S.instances.get(key(i));
    if (inst) { inst.lease = i.lease; inst.createRevision = i.createRevision; }
  }
  for (const [id, v] of Object.entries(l.leases || {})) S.leases.set(id, v);
  scheduleRender();
}

// connState is the state of the page's stream from the dashboard; the pill
// shows it, or "stale" while the dashboard itself cannot reach etcd.
let connState = 'connecting';
function setConn(state) {
  connState = state;
  renderPill();
  document.getElementById('disconnected').hidden = state !== 'reconnecting';
}

function renderPill() {
  const c = document.getElementById('conn');
  const stale = connState === 'live' && S.health && S.health.stale;
  c.textContent = stale ? 'stale' : connState;
  c.className = 'pill' + (stale || connState === 'reconnecting' ? ' down' : connState === 'live' ? ' live' : '');
}

let source = null;
function connect() {
  source = new EventSource('api/events?since=' + encodeURIComponent(S.epoch + '.' + S.seq));
  source.addEventListener('open', () => setConn('live'));
  source.addEventListener('error', () => {
    setConn('reconnecting');
    // The browser retries a broken connection by itself, but gives up on an
    // error answer; then start again.
    if (source.readyState === EventSource.CLOSED) {
      source = null;
      setTimeout(start, 2000);
    }
  });
  source.addEventListener('state', (e) => { setConn('live'); applyState(JSON.parse(e.data)); });
  source.addEventListener('delta', (e) => applyDelta(JSON.parse(e.data)));
  source.addEventListener('leases', (e) => applyLeases(JSON.parse(e.data)));
  source.addEventListener('health', (e) => { S.health = JSON.parse(e.data); renderHealth(); });
  source.addEventListener('stats', (e) => {
    S.stats.push(JSON.parse(e.data));
    if (S.stats.length > 120) S.stats.splice(0, S.stats.length - 120);
    renderCharts();
  });
}

async function start() {
  try {
    const r = await fetch('api/state', {cache: 'no-store'});
    if (!r.ok) throw new Error(r.status + ' ' + r.statusText);
    applyState(await r.json());
  } catch (err) {
    setConn('reconnecting');
    setTimeout(start, 1000);
    return;
  }
  connect();
}

// ---- rendering ----

let renderTimer = null;
function scheduleRender() {
  if (renderTimer === null) renderTimer = setTimeout(() => { renderTimer = null; render(); }, 100);
}

function render() {
  const t0 = performance.now();
  renderSummary();
  renderServices();
  renderInstances();
  renderTimeline();
  renderHealth();
  renderCharts();
  S.flash.clear();
  window.__renderMs = performance.now() - t0; // read by the scale test
}

function matches(i, f) {
  if (!f) return true;
  if (i.service.toLowerCase().includes(f) || i.addr.toLowerCase().includes(f) || i.id.toLowerCase().includes(f)) return true;
  if ((i.zone || '').toLowerCase().includes(f) || (i.version || '').toLowerCase().includes(f)) return true;
  for (const [k, v] of Object.entries(i.tags || {})) {
    if ((k + '=' + v).toLowerCase().includes(f)) return true;
  }
  return false;
}

// services groups the instances that match the filter by service.
function services() {
  const f = S.filter;
  const m = new Map();
  for (const i of S.instances.values()) {
    let s = m.get(i.service);
    if (!s) { s = {name: i.service, all: 0, shown: [], zones: new Set(), versions: new Set()}; m.set(i.service, s); }
    s.all++;
    if (i.zone) s.zones.add(i.zone);
    if (i.version) s.versions.add(i.version);
    if (!f || i.service.toLowerCase().includes(f) || matches(i, f)) s.shown.push(i);
  }
  return [...m.values()].filter((s) => s.shown.length > 0).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

function renderSummary() {
  const n = new Set([...S.instances.values()].map((i) => i.service)).size;
  let t = n + ' services, ' + S.instances.size + ' instances under "' + S.prefix + '" at revision ' + S.revision;
  if (S.skipped) t += ' (' + S.skipped + ' malformed values skipped)';
  document.getElementById('summary').textContent = t;
}

const sorted = (set) => [...set].sort();

const serviceRows = new Map(); // name -> {sig, tr}: rows reused while unchanged
let servicesSig = '';

function renderServices() {
  const list = services();
  const tbody = document.querySelector('#services tbody');
  if (S.selected && !list.some((s) => s.name === S.selected)) S.selected = '';
  const total = list.reduce((n, s) => n + s.shown.length, 0);
  const shown = list.slice(0, MAX_SERVICES);
  const sigs = shown.map((s) => [s.name, s.all, s.shown.length, sorted(s.zones).join(','), sorted(s.versions).join(','), s.name === S.selected].join('\u0000'));
  const sig = S.selected + '\u0000' + total + '\u0000' + S.filter + '\u0001' + sigs.join('\u0001');
  if (sig === servicesSig) return; // nothing to redo: no layout either
  servicesSig = sig;
  const rows = [el('tr', {className: S.selected === '' ? 'selected' : '', dataset: {service: ''}, onclick: () => select('')},
    el('td', null, el('em', null, 'all services')), el('td', {className: 'num'}, String(total)), el('td'), el('td'))];
  const keep = new Set();
  shown.forEach((s, n) => {
    keep.add(s.name);
    const old = serviceRows.get(s.name);
    if (old && old.sig === sigs[n]) { rows.push(old.tr); return; }
    const tr = el('tr', {className: s.name === S.selected ? 'selected' : '', dataset: {service: s.name}, onclick: () => select(s.name)},
      el('td', {className: 'mono'}, s.name),
      el('td', {className: 'num'}, S.filter ? s.shown.length + ' / ' + s.all : String(s.all)),
      el('td', null, ...sorted(s.zones).map((z) => el('span', {className: 'chip'}, z))),
      el('td', null, ...sorted(s.versions).map((v) => el('span', {className: 'chip'}, v))));
    serviceRows.set(s.name, {sig: sigs[n], tr: tr});
    rows.push(tr);
  });
  for (const name of serviceRows.keys()) if (!keep.has(name)) serviceRows.delete(name);
  replaceRows(tbody, rows);
  document.getElementById('services-note').textContent =
    list.length > MAX_SERVICES ? 'Showing ' + MAX_SERVICES + ' of ' + list.length + ' services: filter to find the others.' : '';
}

function select(name) {
  S.selected = name;
  render();
}

function ttlCell(i) {
  if (!i.lease) return el('td', {className: 'num muted', title: 'lease not read yet'}, '…');
  if (i.lease === '0') return el('td', {className: 'num muted', title: 'no lease'}, '-');
  const l = S.leases.get(i.lease);
  if (!l) return el('td', {className: 'num muted', title: 'lease ' + i.lease + ' not read yet'}, '…');
  const title = 'lease ' + i.lease + ', granted ' + l.granted + 's, read ' + fmtDuration(now() - l.at) + ' ago';
  if (l.ttl < 0) return el('td', {className: 'num low', title: title}, 'expired');
  const left = Math.max(0, Math.round(l.ttl - (now() - l.at) / 1000));
  return el('td', {className: 'num' + (l.granted && left * 3 < l.granted ? ' low' : ''), title: title}, left + 's / ' + l.granted + 's');
}

function renderInstances() {
  const f = S.filter;
  let shown = [];
  for (const i of S.instances.values()) {
    if (S.selected && i.service !== S.selected) continue;
    if (f && !(i.service.toLowerCase().includes(f) || matches(i, f))) continue;
    shown.push(i);
  }
  shown.sort(byServiceID);
  const total = shown.length;
  shown = shown.slice(0, MAX_ROWS);
  document.getElementById('instances').classList.toggle('one', S.selected !== '');
  document.getElementById('instances-title').textContent = S.selected ? 'Instances of ' + S.selected : 'Instances of all services';
  const rows = shown.map((i) => {
    const tags = Object.entries(i.tags || {}).sort().map(([k, v]) => el('span', {className: 'tag'}, k + '=' + v));
    const age = now() - i.firstSeen;
    const tr = el('tr', {className: S.flash.has(key(i)) ? 'flash' : '', dataset: {service: i.service, id: i.id}},
      el('td', {className: 'mono svc'}, i.service),
      el('td', {className: 'mono'}, i.addr),
      el('td', {className: 'mono'}, i.id),
      el('td', null, i.zone || '-'),
      el('td', {className: 'num'}, String(i.weight)),
      el('td', null, i.version || '-'),
      el('td', {className: 'tags'}, ...tags),
      ttlCell(i),
      el('td', {className: 'num', title: i.atStart ? 'there when the dashboard started' : 'first seen ' + fmtTime(i.firstSeen) + (i.createRevision ? ', created at revision ' + i.createRevision : '')},
        (i.atStart ? '≥ ' : '') + fmtDuration(age)));
    return tr;
  });
  replaceRows(document.querySelector('#instances tbody'), rows);
  document.getElementById('instances-note').textContent =
    total > MAX_ROWS ? 'Showing ' + MAX_ROWS + ' of ' + total + ' instances: pick a service or filter.' : (total === 0 ? 'No instances.' : '');
}

function renderTimeline() {
  const items = [];
  for (let n = S.timeline.length - 1; n >= 0; n--) {
    const t = S.timeline[n];
    items.push(el('li', null,
      el('span', {className: 'muted'}, fmtTime(t.time) + ' '),
      el('span', {className: 'kind ' + t.kind}, t.kind),
      el('span', {className: 'mono'}, t.service + (t.id ? '/' + t.id : '')),
      t.addr && t.addr !== t.id ? el('span', {className: 'muted'}, ' ' + t.addr) : null,
      el('span', {className: 'muted'}, '  rev ' + t.revision)));
  }
  replaceRows(document.getElementById('timeline'), items);
}

function renderHealth() {
  const h = S.health;
  if (!h) return;
  document.body.classList.toggle('stale', h.stale);
  renderPill();
  document.getElementById('stale').hidden = !h.stale;
  document.getElementById('stale-detail').textContent = h.stale
    ? '(since ' + fmtTime(h.staleSince) + (h.checkedAt ? '; last reached ' + fmtTime(h.checkedAt) : '') + ') ' + (h.error || '')
    : '';
  const leader = (h.members || []).find((m) => m.leader);
  const dl = document.getElementById('health-summary');
  const pairs = [
    ['leader', leader ? leader.name + ' (' + leader.id + ')' : (h.leader || 'none')],
    ['revision', String(h.revision)],
    ['db size', fmtBytes(h.dbSize) + ' (in use ' + fmtBytes(h.dbSizeInUse) + ')'],
    ['checked', h.checkedAt ? fmtTime(h.checkedAt) : 'never'],
    ['endpoints', (h.endpoints || []).join(', ')],
    ['state', h.stale ? 'unreachable' : 'healthy'],
  ];
  dl.replaceChildren(...pairs.flatMap(([k, v]) => [el('dt', null, k), el('dd', {className: k === 'state' && h.stale ? 'low' : ''}, v)]));
  replaceRows(document.querySelector('#members tbody'), (h.members || []).map((m) => el('tr', null,
    el('td', null, m.name || '(unstarted)'),
    el('td', {className: 'mono'}, m.id),
    el('td', {className: 'mono'}, (m.clientURLs || []).join(', ')),
    el('td', null, m.leader ? 'leader' : m.learner ? 'learner' : 'follower'),
    el('td', {className: m.reachable ? '' : 'low'}, m.reachable ? 'reachable' : 'unreachable'),
    el('td', null, m.version || '-'),
    el('td', {className: 'num'}, m.dbSize ? fmtBytes(m.dbSize) : '-'),
    el('td', {className: 'num'}, m.raftIndex ? String(m.raftIndex) : '-'))));
}

// ---- charts (demo) ----

const charts = new Map(); // backend -> {card, rps, err, lat}

function renderCharts() {
  const pane = document.getElementById('charts-pane');
  pane.hidden = !S.hasStats;
  if (!S.hasStats || S.stats.length === 0) return;
  const lastSample = S.stats[S.stats.length - 1];
  const names = lastSample.backends.map((b) => b.backend);
  const box = document.getElementById('charts');
  for (const [name, c] of charts) {
    if (!names.includes(name)) { c.card.remove(); charts.delete(name); }
  }
  for (const b of lastSample.backends) {
    let c = charts.get(b.backend);
    if (!c) {
      c = {title: el('h3'), rps: canvas(), err: canvas(), lat: canvas()};
      c.card = el('div', {className: 'chart-card', dataset: {backend: b.backend}}, c.title, c.rps, c.err, c.lat);
      charts.set(b.backend, c);
    }
    box.appendChild(c.card); // keeps the order of the sample
    c.title.textContent = b.backend + (b.addr ? '  ' + b.addr : '') + (b.state ? '  ' + b.state : '');
    const series = (f) => S.stats.map((s) => { const x = s.backends.find((y) => y.backend === b.backend); return x ? f(x) : null; });
    spark(c.rps, [{v: series((x) => x.rps), color: '#2457c5'}], (v) => v.toFixed(0) + ' req/s');
    spark(c.err, [{v: series((x) => x.errors), color: '#c0392b', bars: true}], (v) => v + ' errors');
    spark(c.lat, [{v: series((x) => x.p50ms || null), color: '#1f8a4c'}, {v: series((x) => x.p99ms || null), color: '#b7791f'}],
      (v, all) => 'p50 ' + fmtMs(all[0]) + '  p99 ' + fmtMs(all[1]));
  }
}

function fmtMs(v) {
  if (v === null || v === undefined) return '-';
  return v < 1 ? v.toFixed(2) + 'ms' : v < 10 ? v.toFixed(1) + 'ms' : v.toFixed(0) + 'ms';
}

function canvas() {
  const c = el('canvas', {width: 240, height: 44});
  return c;
}

// spark draws series (arrays with nulls for gaps) over the last 120 samples,
// with the latest values as text.
function spark(cv, series, label) {
  const ctx = cv.getContext('2d');
  const W = cv.width, H = cv.height, top = 14;
  const N = Math.max(30, ...series.map((s) => s.v.length));
  ctx.clearRect(0, 0, W, H);
  let mx = 0;
  for (const s of series) for (const v of s.v) if (v !== null && v > mx) mx = v;
  mx = mx || 1;
  ctx.strokeStyle = '#e2e6eb';
  ctx.beginPath(); ctx.moveTo(0, H - 0.5); ctx.lineTo(W, H - 0.5); ctx.stroke();
  const x = (i, n) => W - ((n - 1 - i) * W) / (N - 1);
  const y = (v) => H - 1 - (v / mx) * (H - top - 2);
  for (const s of series) {
    const n = s.v.length;
    ctx.strokeStyle = ctx.fillStyle = s.color;
    if (s.bars) {
      s.v.forEach((v, i) => { if (v) ctx.fillRect(x(i, n) - 1, y(v), 2, H - 1 - y(v)); });
      continue;
    }
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    let pen = false;
    s.v.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      if (pen) ctx.lineTo(x(i, n), y(v)); else ctx.moveTo(x(i, n), y(v));
      pen = true;
    });
    ctx.stroke();
  }
  const latest = series.map((s) => { const v = s.v[s.v.length - 1]; return v === undefined ? null : v; });
  ctx.fillStyle = '#1d232b';
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillText(label(latest[0] === null ? 0 : latest[0], latest) + '   max ' + (mx < 10 ? mx.toFixed(1) : mx.toFixed(0)), 2, 10);
}

// ---- wiring ----

document.getElementById('filter').addEventListener('input', (e) => {
  S.filter = e.target.value.trim().toLowerCase();
  render();
});
// TTLs count down and ages grow between events.
setInterval(() => { renderInstances(); }, 1000);
start();
