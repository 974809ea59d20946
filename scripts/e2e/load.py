"""The recorded write load of scripts/e2e.sh, and its read-back.

    python3 load.py write URL LOG --rate 20 --seconds 1800 --max 100000
        PUTs e2e-1, e2e-2, ... (value v-N) to URL (the client Service), one new connection each so
        kube-proxy spreads them over the pods, at most RATE a second, until SIGTERM, SECONDS or MAX.
        Appends one line per attempt to LOG: "UNIX-TIME N CODE" (CODE 204 = acknowledged, 0 = no
        answer: refused, reset or timed out after 3 s).
    python3 load.py count LOG [FROM [TO]]
        Prints "attempted acknowledged failed" for the attempts between FROM and TO (Unix times).
    python3 load.py check LOG R URL...
        Reads every acknowledged key back with ?r=R from each URL (a pod) and prints
        "checked N keys x M pods: lost L"; a key is lost when any pod does not answer 200 with its
        value. Exits 1 when L > 0.
"""

import argparse
import http.client
import signal
import sys
import time
import urllib.parse

TIMEOUT_S = 3


def request(url: str, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, body), or (0, b"") when nothing answered."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=TIMEOUT_S)
    try:
        conn.request(method, path, body=body)
        reply = conn.getresponse()
        return reply.status, reply.read()
    except (OSError, http.client.HTTPException):
        return 0, b""
    finally:
        conn.close()


def write(args: argparse.Namespace) -> None:
    stop = False

    def on_term(_signum, _frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    deadline = time.monotonic() + args.seconds
    with open(args.log, "a", buffering=1) as log:
        for n in range(1, args.max + 1):
            if stop or time.monotonic() >= deadline:
                break
            started = time.monotonic()
            status, _ = request(args.url, "PUT", f"/v1/kv/e2e-{n}", f"v-{n}".encode())
            log.write(f"{time.time():.3f} {n} {status}\n")
            time.sleep(max(0.0, 1.0 / args.rate - (time.monotonic() - started)))


def attempts(log: str):
    with open(log) as f:
        for line in f:
            t, n, code = line.split()
            yield float(t), int(n), int(code)


def count(args: argparse.Namespace) -> None:
    lo = args.from_ if args.from_ is not None else float("-inf")
    hi = args.to if args.to is not None else float("inf")
    window = [code for t, _, code in attempts(args.log) if lo <= t < hi]
    acked = sum(1 for code in window if code == 204)
    print(len(window), acked, len(window) - acked)


def check(args: argparse.Namespace) -> None:
    acked = [n for _, n, code in attempts(args.log) if code == 204]
    lost = 0
    for n in acked:
        for url in args.urls:
            status, body = request(url, "GET", f"/v1/kv/e2e-{n}?r={args.r}")
            if status != 200 or body != f"v-{n}".encode():
                lost += 1
                if lost <= 10:
                    print(f"e2e-{n} at {url}: {status} {body[:80]!r}", file=sys.stderr)
                break
    print(f"checked {len(acked)} keys x {len(args.urls)} pods: lost {lost}")
    sys.exit(1 if lost else 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("url")
    w.add_argument("log")
    w.add_argument("--rate", type=float, default=20)
    w.add_argument("--seconds", type=float, default=1800)
    w.add_argument("--max", type=int, default=100000)
    c = sub.add_parser("count")
    c.add_argument("log")
    c.add_argument("from_", nargs="?", type=float)
    c.add_argument("to", nargs="?", type=float)
    k = sub.add_parser("check")
    k.add_argument("log")
    k.add_argument("r", type=int)
    k.add_argument("urls", nargs="+")
    args = parser.parse_args()
    {"write": write, "count": count, "check": check}[args.cmd](args)


if __name__ == "__main__":
    main()
