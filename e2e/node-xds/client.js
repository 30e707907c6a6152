// A gRPC client in another language for Muster's xDS server: it resolves
// xds:///<service> with @grpc/grpc-js-xds (bootstrap from GRPC_XDS_BOOTSTRAP)
// and calls grpc.testing.TestService/UnaryCall, which Muster's echo backends
// answer with their name in SimpleResponse.hostname (field 6).
//
// Usage: node client.js <target> <calls>
// Prints one JSON line: {"ok":N,"failed":N,"backends":{"name":count},"errors":[...]}.
'use strict';

const grpc = require('@grpc/grpc-js');
const xds = require('@grpc/grpc-js-xds');

xds.register();

const [target, callsArg] = process.argv.slice(2);
if (!target) {
  console.error('usage: node client.js <target> <calls>');
  process.exit(2);
}
const calls = Number(callsArg || '100');

// hostname decodes field 6 (string) of a SimpleResponse; other fields are
// skipped by wire type.
function hostname(buf) {
  let i = 0;
  const varint = () => {
    let v = 0, shift = 0, b;
    do {
      b = buf[i++];
      v += (b & 0x7f) * 2 ** shift;
      shift += 7;
    } while (b & 0x80);
    return v;
  };
  while (i < buf.length) {
    const key = varint();
    const field = Math.floor(key / 8), wire = key % 8;
    if (wire === 0) { varint(); continue; }
    if (wire === 1) { i += 8; continue; }
    if (wire === 5) { i += 4; continue; }
    if (wire !== 2) throw new Error('unexpected wire type ' + wire);
    const n = varint();
    if (field === 6) return buf.subarray(i, i + n).toString('utf8');
    i += n;
  }
  return '';
}

const client = new grpc.Client(target, grpc.credentials.createInsecure());
const method = '/grpc.testing.TestService/UnaryCall';

function call(waitForReady) {
  return new Promise((resolve) => {
    const deadline = new Date(Date.now() + (waitForReady ? 20000 : 5000));
    client.makeUnaryRequest(method, () => Buffer.alloc(0), (b) => b, null,
      new grpc.Metadata({ waitForReady }), { deadline },
      (err, resp) => resolve(err ? { err: `${err.code} ${err.details}` } : { name: hostname(resp) }));
  });
}

(async () => {
  const out = { ok: 0, failed: 0, backends: {}, errors: [] };
  // The first call waits until xDS has resolved the service; the others must
  // succeed without waiting.
  for (let k = 0; k < calls; k++) {
    const r = await call(k === 0);
    if (r.err) {
      out.failed++;
      if (out.errors.length < 5) out.errors.push(r.err);
    } else {
      out.ok++;
      out.backends[r.name] = (out.backends[r.name] || 0) + 1;
    }
  }
  console.log(JSON.stringify(out));
  client.close();
  process.exit(out.failed === 0 && out.ok > 0 ? 0 : 1);
})();
