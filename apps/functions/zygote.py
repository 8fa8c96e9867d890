"""The fork server of one function version on one node (standard library only: it runs
as ``/usr/bin/python3 -c SOURCE`` under the function's own unprivileged uid).

Started with the working directory at the unpacked bundle, it imports the handler's
module once, then says ``R`` (or ``E<error>``) on its control socket (fd ``FN_CTL``).
Each control message carries one socket (SCM_RIGHTS): the server forks an *instance*
that sets its rlimits and serves invocations on that socket, and answers with the
instance's pid. Before each invocation the instance allows itself ``cpu_seconds`` more of
CPU time (soft RLIMIT_CPU: SIGXCPU ends it past that, even with threads; the agent's
wall-clock deadline is the main fence). A fork costs a few milliseconds: that is the cold start.

Invocation frames on an instance socket: 8-byte header (two big-endian u32: header
length, body length), a JSON header, the body. Request header ``{"id", "deadline"}``
(wall-clock seconds); reply header ``{"ok", "type"}`` or ``{"ok": false, "code",
"message"}``.

While an instance runs an invocation, every line it writes to stdout or stderr (prints,
the context's logger) starts with the request id and `` | ``: ``fn logs --request``
and the Functions page find one invocation's lines by it.
"""

SOURCE = r'''
import json, os, resource, signal, socket, struct, sys, time, traceback, importlib

def main():
    ctl = socket.socket(fileno=int(os.environ.pop("FN_CTL")))
    handler_spec = os.environ.pop("FN_HANDLER")
    limits = json.loads(os.environ.pop("FN_LIMITS"))
    sys.path.insert(0, os.getcwd())
    try:
        module, func = handler_spec.split(":")
        handler = getattr(importlib.import_module(module), func)
        if not callable(handler):
            raise TypeError(handler_spec + " is not callable")
    except BaseException as exc:
        ctl.sendall(b"E" + ("%s: %s" % (type(exc).__name__, exc)).encode()[:2000])
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:  # instances never preempt the agent that wakes them (it is the latency path)
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        pass
    ctl.sendall(b"R")
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(ctl, 16, 1)
        except OSError:
            return
        if not msg:
            return
        for fd in fds:
            pid = os.fork()
            if pid == 0:
                try:
                    ctl.close()
                    instance(socket.socket(fileno=fd), handler, limits)
                finally:
                    os._exit(0)
            os.close(fd)
            ctl.sendall(struct.pack(">I", pid))

class Context:
    def __init__(self, request_id, deadline, logger):
        self.request_id = request_id
        self.deadline = deadline
        self.logger = logger
    def remaining_ms(self):
        return max(0, int((self.deadline - time.time()) * 1000))

def read_exact(sock, n):
    parts = []
    while n:
        part = sock.recv(min(n, 1 << 20))
        if not part:
            return None
        parts.append(part)
        n -= len(part)
    return b"".join(parts)

def send(sock, header, body=b""):
    head = json.dumps(header).encode()
    sock.sendall(struct.pack(">II", len(head), len(body)) + head + body)

class Tagged:
    """A text stream that starts every line written during an invocation with the
    invocation's request id (``ID | line``), so its lines can be found in the log."""
    current = ""
    def __init__(self, raw):
        self.raw = raw
        self.fresh = True
    def write(self, text):
        if not text:
            return 0
        out = []
        for piece in text.splitlines(True):
            if self.fresh and Tagged.current:
                out.append(Tagged.current + " | ")
            out.append(piece)
            self.fresh = piece.endswith("\n")
        self.raw.write("".join(out))
        self.raw.flush()
        return len(text)
    def flush(self):
        self.raw.flush()
    def isatty(self):
        return False
    def fileno(self):
        return self.raw.fileno()

def instance(sock, handler, limits):
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    cpu_seconds = limits.pop("cpu_seconds")
    for name, value in limits.items():
        which = getattr(resource, name)
        resource.setrlimit(which, (value, value))
    sys.stdout = Tagged(sys.stdout)
    sys.stderr = Tagged(sys.stderr)
    import logging
    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logger = logging.getLogger("fn")
    while True:
        lens = read_exact(sock, 8)
        if lens is None:
            return
        hl, bl = struct.unpack(">II", lens)
        header = json.loads(read_exact(sock, hl))
        body = read_exact(sock, bl) if bl else b""
        try:
            event = json.loads(body) if body else None
        except ValueError:
            event = body
        ctx = Context(header["id"], header["deadline"], logger)
        Tagged.current = "".join(c for c in str(header["id"]) if c.isalnum() or c in "-_.")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        spent = int(usage.ru_utime + usage.ru_stime)
        resource.setrlimit(resource.RLIMIT_CPU,
                           (spent + cpu_seconds, resource.RLIM_INFINITY))
        try:
            result = handler(event, ctx)
            if isinstance(result, (bytes, bytearray)):
                send(sock, {"ok": True, "type": "application/octet-stream"}, bytes(result))
            elif isinstance(result, str):
                send(sock, {"ok": True, "type": "text/plain; charset=utf-8"}, result.encode())
            else:
                send(sock, {"ok": True, "type": "application/json"},
                     json.dumps(result).encode())
        except MemoryError:
            result = None
            send(sock, {"ok": False, "code": "memory",
                        "message": "the handler ran out of its memory limit"})
            return
        except BaseException as exc:
            logger.error("invocation %s failed:\n%s", header["id"], traceback.format_exc())
            send(sock, {"ok": False, "code": "error",
                        "message": ("%s: %s" % (type(exc).__name__, exc))[:2000]})
        finally:
            for stream in (sys.stdout, sys.stderr):
                if not getattr(stream, "fresh", True):
                    stream.write("\n")
            Tagged.current = ""

main()
'''
