// Node's `cluster` in its default round-robin mode (SCHED_RR): the primary accepts and
// hands each connection to a worker over IPC, the design closest to handoff's. Used by
// bench/vs-nginx.sh as a peer.  node bench/node-cluster.js PORT WORKERS
'use strict';
const cluster = require('node:cluster');
const http = require('node:http');
cluster.schedulingPolicy = cluster.SCHED_RR;
const port = Number(process.argv[2] || 8080);
const workers = Number(process.argv[3] || require('node:os').availableParallelism());
if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  process.on('SIGTERM', () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else {
  http.createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('hello\n');
  }).listen(port, '127.0.0.1');
}
