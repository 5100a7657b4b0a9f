#!/usr/bin/env python3
"""The server's CPU per TLS handshake, socket-free: a client and a server SSLObject over MemoryBIOs in one
thread, the server's steps timed with thread_time (CPU, not wall: steadier on a shared machine).

Variants of how the certificate is chosen, with Turnout's server context settings (`certs.server_context`):
  switch       a listener context without a certificate, the SNI callback switching to the certificate's
               context (what proxy/tls/listener.py does)
  nocb         the certificate's context itself, no SNI callback
  cb-noswitch  the certificate's context with an SNI callback that keeps it

  taskset -c 1 .venv/bin/python bench/tls_handshake_micro.py CERT KEY [--rounds 9]
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import time

from proxy.tls.certs import server_context


def contexts(cert: str, key: str) -> dict[str, ssl.SSLContext]:
    def with_cert() -> ssl.SSLContext:
        context = server_context(ssl.TLSVersion.TLSv1_2, True)
        context.load_cert_chain(cert, key)
        return context

    target = with_cert()
    switch = server_context(ssl.TLSVersion.TLSv1_2, True)
    switch.sni_callback = lambda obj, name, ctx: setattr(obj, "context", target)
    keep = with_cert()
    keep.sni_callback = lambda obj, name, ctx: None
    return {"switch": switch, "nocb": with_cert(), "cb-noswitch": keep}


def server_cpu_per_handshake(server: ssl.SSLContext, client: ssl.SSLContext, n: int, resumed: bool) -> float:
    session, spent = None, 0.0
    for _ in range(n):
        s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
        tls_client = client.wrap_bio(c_in, c_out, server_hostname="bench.test",
                                     session=session if resumed else None)
        t0 = time.thread_time()
        tls_server = server.wrap_bio(s_in, s_out, server_side=True)
        spent += time.thread_time() - t0
        for _ in range(4):
            try:
                tls_client.do_handshake()
            except ssl.SSLWantReadError:
                pass
            s_in.write(c_out.read())
            t0 = time.thread_time()
            try:
                tls_server.do_handshake()
            except ssl.SSLWantReadError:
                pass
            out = s_out.read()
            spent += time.thread_time() - t0
            c_in.write(out)
        try:
            tls_client.read(1)  # takes the session tickets
        except ssl.SSLWantReadError:
            pass
        session = tls_client.session
    return spent / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("cert")
    parser.add_argument("key")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    variants = contexts(args.cert, args.key)
    for resumed in (True, False):
        spent: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):  # interleaved
            for name, context in variants.items():
                n = 300 if resumed else 150
                spent[name].append(server_cpu_per_handshake(context, client, n, resumed))
        print("resumed" if resumed else "full   ",
              "  ".join(f"{name} {statistics.median(v):.0f} us" for name, v in spent.items()))


if __name__ == "__main__":
    main()
