"""``python -m bench.peers enqueue dramatiq|celery PREFIX N BODY``: queue N peer jobs (ids PREFIX0..), then exit."""

from __future__ import annotations

import importlib
import sys


def main(argv: list[str]) -> int:
    if len(argv) != 5 or argv[0] != "enqueue" or argv[1] not in ("dramatiq", "celery"):
        print(__doc__, file=sys.stderr)
        return 2
    _, peer, prefix, count, body = argv
    app = importlib.import_module(f"bench.peers.{peer}_app")
    ids = [f"{prefix}{i}" for i in range(int(count))]
    app.enqueue([(delivery_id, f"{delivery_id}\n{body}") for delivery_id in ids])  # the webhook keys by word 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
