# frozen_string_literal: true

# A small Rack app for the handoff Rack worker (rack_worker.rb). Every answer names the
# worker in `X-Handoff-Worker`, so `curl -i` shows the balancing.
#
#   handoff run -w 4 -- ruby examples/ruby/rack_worker.rb examples/ruby/config.ru
#
#   GET  /              hello, with the worker id and pid
#   POST /echo          the request body back, and its size in X-Body-Bytes
#   GET  /sleep?ms=N    answers after N ms (a slow request, for drain tests)
#   GET  /cpu?ms=N      burns N ms of CPU (a slow request: the worker hands back after it)
#   GET  /stream?n=N    N lines streamed by an `each` body (sent chunked)
#   GET  /error         raises: a 500, and the traceback on stderr
#   GET  /ip            the client's address (REMOTE_ADDR)

WORKER = ENV.fetch("HANDOFF_WORKER_ID", "?")

# A body that yields its lines one by one and has no length: the worker sends it
# with Transfer-Encoding: chunked.
class Lines
  def initialize(n)
    @n = n
  end

  def each
    @n.times { |i| yield "line #{i}\n" }
  end
end

app = lambda do |env|
  req = Rack::Request.new(env)
  headers = { "Content-Type" => "text/plain", "X-Handoff-Worker" => WORKER }
  case [req.request_method, req.path_info]
  when %w[GET /], %w[HEAD /]
    [200, headers, ["hello from Rack worker #{WORKER} (pid #{Process.pid})\n"]]
  when %w[POST /echo], %w[PUT /echo]
    body = req.body.read
    [200, headers.merge("X-Body-Bytes" => body.bytesize.to_s), [body]]
  when %w[GET /sleep]
    sleep(req.params.fetch("ms", "0").to_i / 1000.0)
    [200, headers, ["slept\n"]]
  when %w[GET /cpu]
    clock = Process::CLOCK_THREAD_CPUTIME_ID
    until_s = Process.clock_gettime(clock) + (req.params.fetch("ms", "0").to_i / 1000.0)
    nil while Process.clock_gettime(clock) < until_s
    [200, headers, ["burned\n"]]
  when %w[GET /stream]
    [200, headers, Lines.new(req.params.fetch("n", "3").to_i)]
  when %w[GET /ip]
    [200, headers, ["#{env['REMOTE_ADDR']}\n"]]
  when %w[GET /error]
    raise "a failure in the app, on purpose"
  else
    [404, headers, ["not found\n"]]
  end
end

run app
