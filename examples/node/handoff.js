'use strict';
// handoff.js: the Node side of handoff-node-bridge.py. Feeds the connections the handoff
// master hands to this worker into an ordinary net.Server or http.Server that never
// listens:
//
//   const server = http.createServer(app);
//   require('./handoff').serve(server);
//
// The bridge passes each connection on Node's own IPC channel (NODE_CHANNEL_FD), so it
// arrives as process.on('message', (msg, socket)) with a ready net.Socket; this module
// emits it as the server's 'connection' and reports back to the bridge:
//   {handoff:'ready'}          serve() was called: the bridge starts passing connections
//   {handoff:'done', id}       the connection is ending (DONE to the master)
//   {handoff:'beat'}           every HANDOFF_HEARTBEAT_MS / 2 from a timer: the event
//                              loop is alive (HEARTBEAT to the master)
// and takes {handoff:'drain'}: an http.Server closes its idle keep-alive connections,
// answers the requests in flight with `Connection: close`, and the process exits 0 once
// the last connection is closed (server 'close' is emitted first: clean up there).

const http = require('http');

/** Serves the handoff connections with `server` (a net.Server or http.Server). */
function serve(server, options = {}) {
  if (typeof process.send !== 'function') {
    throw new Error('handoff.js: this process has no IPC channel: start it through the bridge, ' +
      '`handoff run -- python3 examples/node/handoff-node-bridge.py node app.js`');
  }
  const exitOnDrain = options.exitOnDrain !== false;
  const isHttp = server instanceof http.Server;
  const tracked = new Map(); // socket -> {id, inflight, requests}
  let draining = false;

  // With a callback, a closed channel is an error given to it, not an 'error' event.
  const tell = (msg) => {
    if (process.connected) process.send(msg, undefined, {}, () => {});
  };

  const adopt = (id, socket) => {
    const st = { id, inflight: 0, requests: 0, reported: false };
    tracked.set(socket, st);
    const report = () => {
      if (!st.reported) {
        st.reported = true;
        tell({ handoff: 'done', id });
      }
    };
    // The protocol wants DONE before the close, so that the master has counted the
    // connection off before the client sees the end: report on the way into end() and
    // destroy(), which every close of a net.Socket goes through, and at 'close' at last.
    for (const name of ['end', 'destroy']) {
      const original = socket[name];
      socket[name] = function (...args) {
        report();
        return original.apply(this, args);
      };
    }
    socket.once('close', () => {
      report();
      tracked.delete(socket);
      if (draining && tracked.size === 0) finish();
    });
    server.emit('connection', socket);
  };

  if (isHttp) {
    server.on('request', (req, res) => {
      const st = tracked.get(req.socket);
      if (!st) return;
      st.inflight += 1;
      st.requests += 1;
      if (draining) res.shouldKeepAlive = false; // `Connection: close`, then the end
      res.once('close', () => {
        st.inflight -= 1;
        // A response that had started before the drain: end the connection after it.
        if (draining && st.inflight === 0 && !req.socket.destroyed) req.socket.end();
      });
    });
  }

  let finished = false;
  const finish = () => {
    if (finished) return;
    finished = true;
    server.close(() => {}); // 'close' for the app's cleanup (never listened: no error)
    if (exitOnDrain) setImmediate(() => process.exit(0));
    else process.disconnect();
  };

  const drain = () => {
    draining = true;
    if (isHttp) {
      for (const [socket, st] of tracked) {
        if (st.inflight > 0) continue; // ended when its response is done
        if (st.requests > 0) {
          socket.destroy(); // idle keep-alive
        } else {
          // Handed over just now: its first request may be on its way. Serve it if it
          // comes within 2 s (with `Connection: close`), else close.
          setTimeout(() => { if (st.inflight === 0) socket.destroy(); }, 2000).unref();
        }
      }
    }
    if (tracked.size === 0) finish();
  };

  process.on('message', (msg, handle) => {
    if (!msg || typeof msg.handoff !== 'string') return; // the app's own messages
    if (msg.handoff === 'conn' && handle) {
      // From a `,proxy` listener: the client's address from the PROXY header. Own
      // properties shadow net.Socket's getters, so req.socket.remoteAddress is the client.
      for (const key of ['remoteAddress', 'remotePort', 'remoteFamily']) {
        if (msg[key] !== undefined) Object.defineProperty(handle, key, { value: msg[key] });
      }
      adopt(msg.id, handle);
    }
    else if (msg.handoff === 'drain') drain();
  });
  // The bridge is gone (it exited or was killed): nobody can hand over or report.
  process.on('disconnect', () => {
    if (!(finished && !exitOnDrain)) process.exit(0);
  });

  const every = Math.max(10, Number(process.env.HANDOFF_HEARTBEAT_MS || 1000) / 2); // never late
  setInterval(() => tell({ handoff: 'beat' }), every).unref();
  tell({ handoff: 'ready' });
  return server;
}

module.exports = { serve };
