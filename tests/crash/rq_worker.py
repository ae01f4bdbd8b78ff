"""``rq`` command line with the job modules imported first (what a real deployment's preload does).

``python -m tests.crash.rq_worker worker alerts --with-scheduler --url ...`` is ``rq worker ...``, except
that the parent process has already imported ``alert_worker.entrypoint`` and the crash wrapper, so the
forking ``Worker`` does not re-import them in every work-horse (FACTS: ~18 vs ~7 jobs/s).
"""

from __future__ import annotations

import os
import sys

from rq.cli.cli import main

import alert_worker.entrypoint  # noqa: F401 - preload before rq forks work-horses
import tests.crash.jobs  # noqa: F401
from tests.support.fake_twilio import redirect_twilio

if __name__ == "__main__":
    if os.environ.get("CRASH_TWILIO_BASE"):  # the suite's loopback Twilio (forked horses inherit the patch)
        redirect_twilio(os.environ["CRASH_TWILIO_BASE"])
    sys.exit(main(args=sys.argv[1:], prog_name="rq"))
