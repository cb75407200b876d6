#!/usr/bin/env ruby
# frozen_string_literal: true

# handoff Rack worker: any Rack app (a config.ru) on the handoff worker protocol v1
# (docs/PROTOCOL.md), Ruby's standard library plus Rack, no other gem.
#
#   handoff run -w 4 -- ruby examples/ruby/rack_worker.rb examples/ruby/config.ru
#
# Protocol: READY with ACK|DONE|HEARTBEAT|ADDRS|RETURN, ACK on receipt, DONE before each close,
# HEARTBEAT from a thread, DRAIN: finish what is in flight, close idle keep-alive
# connections, exit 0; end of file on the channel: exit at once. From a `,proxy`
# listener (CONN_ADDR), REMOTE_ADDR is the client's address from the PROXY header.
# RETURN (request-level balancing): at a request boundary, with nothing of the next
# request read, an idle keep-alive connection goes back to the master when
# HANDOFF_RETURN says so (auto: while a request has run 2 ms of CPU in the last second;
# always; off), and at DRAIN instead of being closed.
# HTTP: HTTP/1.1 with keep-alive and pipelining, request bodies by Content-Length or
# chunked (answering `Expect: 100-continue`), responses framed by the app's
# Content-Length or else chunked (HTTP/1.0: close-delimited). A thread per connection:
# blocking I/O releases Ruby's GVL, so a slow request never holds up the others.
#
# Settings (environment): HANDOFF_RACK_IDLE_TIMEOUT (seconds a keep-alive connection
# may sit idle, 60), HANDOFF_RACK_MAX_BODY (bytes, 104857600; larger bodies get 413).

require "fcntl"
require "ipaddr"
require "socket"
require "stringio"
begin
  require "rack"
rescue LoadError
  abort "rack_worker: Ruby cannot load Rack: install it (Debian/Ubuntu: apt-get install ruby-rack; " \
        "elsewhere: gem install rack)"
end

module Handoff
  # Frame types and capability bits of protocol v1 (docs/PROTOCOL.md, section 3).
  READY = 0x01
  ACK = 0x02
  DONE = 0x03
  HEARTBEAT = 0x04
  RETURN = 0x05
  CONN = 0x81
  CONN_ADDR = 0x83
  DRAIN = 0x82
  # When to hand idle keep-alive connections back (docs/PROTOCOL.md, section 5).
  MODE = ENV.fetch("HANDOFF_RETURN", "auto") # auto | always | off
  # ACK | DONE | HEARTBEAT | ADDRS (+ RETURN); no BATCH, so every CONN carries one socket
  CAPS = 0b10111 | (MODE == "off" ? 0 : 0b100000)
  # auto: a request that ran (on the CPU, not waiting) for 2 ms makes the worker slow for 1 s
  SLOW_S = 0.002
  HOLD_S = 1.0
  # Room for one descriptor: CMSG_SPACE(sizeof(int)) is 24 on Linux. Giving a size also
  # stops Ruby from peeking first (which would install every descriptor twice).
  CONTROL_LEN = 64

  # A request the worker answers itself (with this status) and then closes.
  class BadRequest < StandardError
    attr_reader :status

    def initialize(status, message)
      super(message)
      @status = status
    end
  end

  # Bytes read from a client socket but not used yet, and reads that fill it.
  class Reader
    def initialize(sock)
      @sock = sock
      @buf = +"".b
    end

    def buffered?
      !@buf.empty?
    end

    # Reads more; false at end of file.
    def fill
      @buf << @sock.readpartial(65_536)
      true
    rescue EOFError
      false
    end

    # The request line and headers, up to and including the empty line; nil if the
    # client closed before sending a byte.
    def head(limit)
      loop do
        i = @buf.index("\r\n\r\n")
        raise BadRequest.new(431, "request head over #{limit} bytes") if (i || @buf.bytesize) > limit
        return @buf.slice!(0, i + 4) if i

        next if fill
        return nil if @buf.empty?

        raise BadRequest.new(400, "connection closed inside the request head")
      end
    end

    def exactly(n)
      while @buf.bytesize < n
        raise BadRequest.new(400, "connection closed inside the request body") unless fill
      end
      @buf.slice!(0, n)
    end

    def line(limit = 4096)
      loop do
        i = @buf.index("\r\n")
        return @buf.slice!(0, i + 2).chomp!("\r\n") if i
        raise BadRequest.new(400, "chunk line too long") if @buf.bytesize > limit
        raise BadRequest.new(400, "connection closed inside a chunked body") unless fill
      end
    end
  end

  # One Rack app served on connections handed over by the master.
  class RackWorker
    HEAD_LIMIT = 65_536
    NO_BODY = [204, 304].freeze

    def initialize(app, chan)
      @app = app
      @chan = chan
      @me = ENV.fetch("HANDOFF_WORKER_ID", "0")
      @send_lock = Mutex.new
      @threads = []
      @draining = false
      # Written once at DRAIN and never read: readable from then on, it wakes every
      # connection thread waiting in IO.select for its next request.
      @drain_r, @drain_w = IO.pipe
      @idle_timeout = Float(ENV.fetch("HANDOFF_RACK_IDLE_TIMEOUT", "60"))
      @slow_until = 0.0
      @max_body = Integer(ENV.fetch("HANDOFF_RACK_MAX_BODY", "104857600"))
    end

    def log(msg)
      $stderr.write("rack worker #{@me} (pid #{Process.pid}): #{msg}\n")
    end

    # Sends one frame (one send on a SEQPACKET socket: whole, even from many threads).
    def frame(kind, ids = [])
      bytes = [kind, 1, ids.size].pack("CCv") + ids.pack("Q<*")
      @send_lock.synchronize { @chan.sendmsg(bytes) }
    end

    def run
      @chan.sendmsg([READY, 1, 1, CAPS, Process.pid].pack("CCvVV"))
      start_heartbeat
      loop do
        data, _addr, rflags, *controls = @chan.recvmsg(4096, 0, CONTROL_LEN, scm_rights: true)
        ios = controls.select { |c| c.cmsg_is?(:SOCKET, :RIGHTS) }.flat_map(&:unix_rights)
        exit!(0) if data.empty? && ios.empty? # end of file: the master is gone
        if data.bytesize < 4
          ios.each(&:close)
          abort "rack worker #{@me}: a short frame (#{data.bytesize} bytes); exiting"
        end
        kind, _version, n = data.unpack("CCv")
        break if kind == DRAIN

        size = { CONN => 20, CONN_ADDR => 60 }[kind]
        if (rflags & Socket::MSG_CTRUNC) != 0 && size && n == 1 && data.bytesize == size
          # Out of descriptors: this connection is lost, not the worker. DONE without ACK
          # tells the master; the connections already here are served on.
          ios.each(&:close)
          warn "rack worker #{@me}: out of descriptors, a connection lost in transit (MSG_CTRUNC); " \
               "raise the worker's limit (ulimit -n) or lower --max-conns-per-worker"
          frame(DONE, [data.unpack1("Q<", offset: 4)])
          next
        end
        unless size && n == 1 && ios.size == 1 && data.bytesize == size
          ios.each(&:close)
          abort "rack worker #{@me}: unexpected frame #{data[0, 4].unpack1('H*')} with #{ios.size} descriptors"
        end
        accept(data.unpack1("Q<", offset: 4), ios[0], kind == CONN_ADDR ? client_address(data) : nil)
      end
      drain
    end

    private

    def start_heartbeat
      every = Integer(ENV.fetch("HANDOFF_HEARTBEAT_MS", "1000")) / 2000.0 # twice per period: never late
      Thread.new do
        loop do
          sleep every
          frame(HEARTBEAT)
        end
      rescue SystemCallError, IOError
        exit!(0) # the master is gone
      end
    end

    # The client's address from a CONN_ADDR item's address block (a PROXY header the
    # master read): [ip, port], or nil for "use the socket's own".
    def client_address(data)
      family, = data.unpack("C", offset: 20)
      port, = data.unpack("v", offset: 22)
      case family
      when 4 then [IPAddr.new_ntoh(data.byteslice(28, 4)).to_s, port]
      when 6 then [IPAddr.new_ntoh(data.byteslice(28, 16)).to_s, port]
      end
    end

    def accept(id, io, client)
      sock = Socket.for_fd(io.fileno)
      io.autoclose = false # `sock` owns the descriptor now
      frame(ACK, [id])
      begin
        sock.setsockopt(Socket::IPPROTO_TCP, Socket::TCP_NODELAY, 1)
      rescue SystemCallError
        nil # a Unix socket: no Nagle to turn off
      end
      @threads = @threads.select(&:alive?) << Thread.new { serve(id, sock, client) }
    end

    def drain
      @draining = true
      @drain_w.write("x")
      @threads.each(&:join)
      exit(0)
    end

    def serve(id, sock, client)
      reader = Reader.new(sock)
      returned = false
      first = true
      loop do
        case next_step(sock, reader, first)
        when :request
          first = false
          break unless serve_one(sock, reader, client)
          # At a request boundary, with nothing of the next request read: may go back.
          break if !reader.buffered? && hand_back_now? && (returned = hand_back(id, sock))
        when :hand_back
          returned = hand_back(id, sock)
          break
        else
          break
        end
      end
    rescue SystemCallError, IOError
      nil # the client went away
    rescue StandardError => e # a response body that raised while being sent
      log("closing connection #{id}: #{e.class}: #{e.message}")
    ensure
      begin
        frame(DONE, [id]) unless returned # RETURN stands for DONE; DONE goes before the close
      rescue SystemCallError, IOError
        nil # the master is gone; nobody to tell
      end
      sock.close # our copy: a returned connection lives on in the master
    end

    # What to do next with a connection: :request when bytes are there (or arrive);
    # :close when it sits idle past the timeout; at DRAIN, :hand_back an idle keep-alive
    # connection (with RETURN) or :close it. A new connection whose first request is on
    # its way gets 2 s more after DRAIN: its client has not been served yet.
    def next_step(sock, reader, first)
      return :request if reader.buffered?

      ready, = IO.select([sock, @drain_r], nil, nil, @idle_timeout)
      return :close if ready.nil?
      return :request if ready.include?(sock)
      return (MODE == "off" ? :close : :hand_back) unless first

      IO.select([sock], nil, nil, 2).nil? ? :close : :request
    end

    def hand_back_now?
      case MODE
      when "off" then false
      when "always" then true
      else @draining || Process.clock_gettime(Process::CLOCK_MONOTONIC) < @slow_until
      end
    end

    # RETURN: gives an idle connection back to the master; true if the master has it
    # now. Ruby made the socket non-blocking when it received it: the master gets it
    # back in blocking mode, as it sent it. A full channel (EAGAIN) transfers nothing:
    # the connection stays ours.
    def hand_back(id, sock)
      flags = sock.fcntl(Fcntl::F_GETFL)
      sock.fcntl(Fcntl::F_SETFL, flags & ~File::NONBLOCK)
      bytes = [RETURN, 1, 1, id].pack("CCvQ<")
      rights = Socket::AncillaryData.unix_rights(sock)
      sent = @send_lock.synchronize { @chan.sendmsg_nonblock(bytes, 0, nil, rights, exception: false) }
      return true unless sent == :wait_writable

      sock.fcntl(Fcntl::F_SETFL, flags)
      false
    end

    # Reads one request, calls the app, writes the response; whether to keep the
    # connection open for another.
    def serve_one(sock, reader, client)
      head = reader.head(HEAD_LIMIT)
      return false if head.nil?

      env, keep = parse(head, sock, client)
      body = read_body(env, reader, sock)
      env["rack.input"] = StringIO.new(body)
      env["CONTENT_LENGTH"] = body.bytesize.to_s if env.key?("handoff.chunked")
      ran = Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID)
      keep = respond(sock, env, keep)
      if Process.clock_gettime(Process::CLOCK_THREAD_CPUTIME_ID) - ran >= SLOW_S
        @slow_until = Process.clock_gettime(Process::CLOCK_MONOTONIC) + HOLD_S
      end
      keep
    rescue BadRequest => e
      log("#{e.status}: #{e.message}")
      simple(sock, e.status)
      false
    end

    def parse(head, sock, client)
      lines = head.split("\r\n")
      method, target, version = lines.shift.to_s.split(" ", 3)
      unless method&.match?(/\A[A-Z]+\z/) && target && version&.match?(%r{\AHTTP/1\.[01]\z})
        raise BadRequest.new(400, "bad request line")
      end

      headers = {}
      lines.each do |l|
        name, value = l.split(":", 2)
        raise BadRequest.new(400, "bad header line") if value.nil? || name.empty? || name.match?(/\s/)

        key = name.upcase.tr("-", "_")
        key = "HTTP_#{key}" unless %w[CONTENT_TYPE CONTENT_LENGTH].include?(key)
        value = value.strip
        headers[key] = headers.key?(key) ? "#{headers[key]}#{key == 'HTTP_COOKIE' ? '; ' : ', '}#{value}" : value
      end
      path, query = target.sub(%r{\Ahttps?://[^/]*}i, "").split("?", 2)
      host, port = server_name(headers["HTTP_HOST"], sock)
      env = headers.merge(
        "REQUEST_METHOD" => method, "SCRIPT_NAME" => "", "PATH_INFO" => path.to_s,
        "QUERY_STRING" => query.to_s, "REQUEST_URI" => target, "SERVER_NAME" => host,
        "SERVER_PORT" => port, "SERVER_PROTOCOL" => version, "HTTP_VERSION" => version,
        "REMOTE_ADDR" => client ? client[0] : remote_addr(sock),
        "rack.version" => Rack::VERSION, "rack.url_scheme" => "http", "rack.errors" => $stderr,
        "rack.multithread" => true, "rack.multiprocess" => true, "rack.run_once" => false,
        "rack.hijack?" => false, "handoff.worker_id" => @me
      )
      conn = headers["HTTP_CONNECTION"].to_s.downcase
      keep = version == "HTTP/1.1" ? !conn.include?("close") : conn.include?("keep-alive")
      [env, keep]
    end

    def server_name(host, sock)
      if host && !host.empty?
        name, port = host.match(/\A(.*?)(?::(\d+))?\z/).captures # "[::1]:8080" too
        return [name, port || "80"]
      end
      addr = sock.local_address
      addr.ip? ? [addr.ip_address, addr.ip_port.to_s] : ["localhost", "0"]
    rescue SystemCallError
      ["localhost", "0"]
    end

    def remote_addr(sock)
      addr = sock.remote_address
      addr.ip? ? addr.ip_address : "127.0.0.1"
    rescue SystemCallError
      "127.0.0.1"
    end

    # The whole request body, read before the app is called (so the app never blocks
    # on a slow client while holding a database connection, say).
    def read_body(env, reader, sock)
      chunked = env.delete("HTTP_TRANSFER_ENCODING")
      length = env["CONTENT_LENGTH"]
      if chunked
        # Both framings at once is how requests are smuggled: refuse it.
        raise BadRequest.new(400, "both Transfer-Encoding and Content-Length") if length
        raise BadRequest.new(501, "transfer coding #{chunked.inspect}") unless chunked.downcase.strip == "chunked"

        continue(env, sock)
        env["handoff.chunked"] = true
        return read_chunked(reader)
      end
      return "".b if length.nil?
      raise BadRequest.new(400, "bad Content-Length #{length.inspect}") unless length.match?(/\A\d{1,18}\z/)

      n = Integer(length, 10)
      raise BadRequest.new(413, "body of #{n} bytes over HANDOFF_RACK_MAX_BODY") if n > @max_body
      return "".b if n.zero?

      continue(env, sock)
      reader.exactly(n)
    end

    def continue(env, sock)
      return unless env["SERVER_PROTOCOL"] == "HTTP/1.1" && env["HTTP_EXPECT"].to_s.casecmp?("100-continue")

      sock.write("HTTP/1.1 100 Continue\r\n\r\n")
    end

    def read_chunked(reader)
      body = +"".b
      loop do
        size_line = reader.line.split(";", 2)[0].strip
        raise BadRequest.new(400, "bad chunk size #{size_line.inspect}") unless size_line.match?(/\A\h{1,15}\z/)

        size = size_line.to_i(16)
        if size.zero?
          nil until reader.line.empty? # trailers, ignored
          return body
        end
        raise BadRequest.new(413, "chunked body over HANDOFF_RACK_MAX_BODY") if body.bytesize + size > @max_body

        body << reader.exactly(size)
        raise BadRequest.new(400, "chunk not followed by CRLF") unless reader.exactly(2) == "\r\n"
      end
    end

    def respond(sock, env, keep)
      status, headers, body = call_app(env)
      if status.nil?
        simple(sock, 500)
        return false
      end

      status = status.to_i
      # A response finished during a drain is the connection's last, unless it can go
      # back to the master (RETURN), which keeps it open across a reload.
      keep = false if @draining && MODE == "off"
      head = +"HTTP/1.1 #{status} #{Rack::Utils::HTTP_STATUS_CODES.fetch(status, 'Unknown')}\r\n"
      length = nil
      headers.each do |name, values|
        lower = name.to_s.downcase
        next if %w[connection transfer-encoding keep-alive].include?(lower) # the worker frames the message

        values = values.is_a?(Array) ? values : values.to_s.split("\n")
        length = values.first if lower == "content-length"
        values.each { |v| head << "#{name}: #{v}\r\n" }
      end
      no_body = NO_BODY.include?(status) || status < 200
      bodiless = no_body || env["REQUEST_METHOD"] == "HEAD"
      parts = nil
      if !no_body && length.nil? && body.respond_to?(:to_ary) # HEAD too: the length GET would have
        parts = body.to_ary
        length = parts.sum(&:bytesize).to_s
        head << "Content-Length: #{length}\r\n"
      end
      chunked = !bodiless && length.nil? && env["SERVER_PROTOCOL"] == "HTTP/1.1"
      keep &&= bodiless || !length.nil? || chunked
      head << "Transfer-Encoding: chunked\r\n" if chunked
      head << "Connection: #{keep ? 'keep-alive' : 'close'}\r\n\r\n"
      write_body(sock, head, parts || body, bodiless, chunked)
      keep
    ensure
      body.close if body.respond_to?(:close)
    end

    def call_app(env)
      @app.call(env)
    rescue StandardError, ScriptError => e
      log("the app raised #{e.class}: #{e.message}\n  #{(e.backtrace || []).join("\n  ")}")
      nil
    end

    # Writes the head and the body, coalescing small pieces into few writes.
    def write_body(sock, head, body, bodiless, chunked)
      out = head
      unless bodiless
        body.each do |part|
          part = part.to_s
          next if part.empty?

          out << (chunked ? "#{part.bytesize.to_s(16)}\r\n#{part}\r\n" : part)
          if out.bytesize >= 65_536
            sock.write(out)
            out = +""
          end
        end
        out << "0\r\n\r\n" if chunked
      end
      sock.write(out) unless out.empty?
    end

    def simple(sock, status)
      text = "#{Rack::Utils::HTTP_STATUS_CODES.fetch(status, 'Error')}\n"
      sock.write("HTTP/1.1 #{status} #{text.chomp}\r\nContent-Type: text/plain\r\n" \
                 "Content-Length: #{text.bytesize}\r\nConnection: close\r\n\r\n#{text}")
      true
    rescue SystemCallError, IOError
      true
    end
  end
end

if $PROGRAM_NAME == __FILE__
  config = ARGV[0] or abort "usage: handoff run -- ruby #{__FILE__} CONFIG.ru"
  abort "rack_worker: HANDOFF_FD is not set: run this under `handoff run -- ruby #{__FILE__} #{config}`" unless ENV["HANDOFF_FD"]
  begin
    app = Rack::Builder.parse_file(config)
  rescue StandardError, ScriptError => e
    abort "rack_worker: cannot load #{config}: #{e.class}: #{e.message}"
  end
  app = app[0] if app.is_a?(Array) # Rack 2 returns [app, options], Rack 3 the app
  chan = Socket.for_fd(Integer(ENV["HANDOFF_FD"])) # AF_UNIX, SOCK_SEQPACKET
  chan.close_on_exec = true # the app may start programs: they get no channel
  Handoff::RackWorker.new(app, chan).run
end
