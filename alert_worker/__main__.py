"""``python -m alert_worker`` runs the same CLI as ``alert-worker``."""

import sys

from alert_worker.cli import main

sys.exit(main())
