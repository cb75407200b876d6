'use strict';
// A plain http.createServer app served by handoff workers. Every answer names the worker
// in `X-Handoff-Worker`, so `curl -i` shows the balancing.
//
//   handoff run -w 4 -- python3 examples/node/handoff-node-bridge.py node examples/node/server.js
//
//   GET  /              hello, with the worker id and pid
//   POST /echo          the request body back, and its size in X-Body-Bytes
//   GET  /sleep?ms=N    answers after N ms (a slow request, for drain tests)
//   GET  /ip            the client's address (from the PROXY header on a `,proxy` listener)
//   GET  /hang          busy-loops forever: the master sees the beats stop and replaces
//                       the worker (with --worker-timeout)

const http = require('http');
const handoff = require('./handoff');

const WORKER = process.env.HANDOFF_WORKER_ID ?? '?';

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  res.setHeader('X-Handoff-Worker', WORKER);
  res.setHeader('Content-Type', 'text/plain');
  if (req.method === 'GET' && url.pathname === '/') {
    res.end(`hello from Node worker ${WORKER} (pid ${process.pid})\n`);
  } else if (req.method === 'POST' && url.pathname === '/echo') {
    const parts = [];
    req.on('data', (chunk) => parts.push(chunk));
    req.on('end', () => {
      const body = Buffer.concat(parts);
      res.setHeader('X-Body-Bytes', body.length);
      res.end(body);
    });
  } else if (req.method === 'GET' && url.pathname === '/sleep') {
    setTimeout(() => res.end('slept\n'), Number(url.searchParams.get('ms') || 0));
  } else if (req.method === 'GET' && url.pathname === '/ip') {
    res.end(`${req.socket.remoteAddress}\n`);
  } else if (req.method === 'GET' && url.pathname === '/hang') {
    for (;;); // eslint-disable-line no-empty
  } else {
    res.statusCode = 404;
    res.end('not found\n');
  }
});

handoff.serve(server);
