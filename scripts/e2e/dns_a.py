"""Prints the A records of NAME from the DNS server SERVER (UDP port 53), one address a line.

Exits non-zero on a timeout, an error code or no answer: scripts/e2e/cluster.sh's check that CoreDNS
serves cluster.local (a minimal machine has no dig).

    python3 dns_a.py NAME SERVER
"""

import random
import socket
import struct
import sys


def main() -> None:
    name, server = sys.argv[1], sys.argv[2]
    qid = random.randrange(65536)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    question += struct.pack(">HH", 1, 1)  # type A, class IN
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(query, (server, 53))
        reply = s.recv(4096)
    rid, flags, _, answers = struct.unpack(">HHHH", reply[:8])
    if rid != qid or flags & 0xF or answers == 0:
        sys.exit(f"{name}: rcode {flags & 0xF}, {answers} answers")
    i = len(query)  # past the header and the echoed question
    for _ in range(answers):
        if reply[i] & 0xC0 == 0xC0:  # a compressed name: a 2-byte pointer
            i += 2
        else:
            i = reply.index(b"\0", i) + 1
        rtype, _, _, rdlen = struct.unpack(">HHIH", reply[i : i + 10])
        i += 10
        if rtype == 1:
            print(socket.inet_ntoa(reply[i : i + rdlen]))
        i += rdlen


if __name__ == "__main__":
    main()
