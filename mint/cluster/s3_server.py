"""The cluster's S3: moto's server on HOST PORT until SIGTERM, `python -m mint.cluster.s3_server HOST PORT`.

Not `moto_server`, which logs a line per request: tansu polls S3 several times a second, so that log
would grow by megabytes an hour. moto keeps what it stores in memory, so a restart starts it empty.
"""

from __future__ import annotations

import logging
import signal
import sys

from moto.server import ThreadedMotoServer


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # its request lines are INFO
    # Blocked before the server's threads start, so they inherit the mask and sigwait below gets them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    print(f"S3 (moto) on http://{host}:{port}", flush=True)
    received = signal.sigwait({signal.SIGTERM, signal.SIGINT})
    print(f"stopping on {signal.Signals(received).name}", flush=True)
    server.stop()


if __name__ == "__main__":
    main()
