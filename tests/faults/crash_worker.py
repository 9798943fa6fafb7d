"""A Remit process for the kill -9 tests: opens tasks and authorizes calls until killed.

Usage: python -m tests.faults.crash_worker DATA_ROOT RUN_NUMBER
Prints ``ready`` once its first call is decided, then loops (bounded) until SIGKILLed.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

from remit.agent import AgentSession
from remit.clock import SystemClock
from remit.core.secrets import Secret
from tests.conftest import PRINCIPAL
from tests.faults.conftest import FAULT_CEILING, build, intent

MAX_SECONDS = 20.0  # never outlives a forgotten test


def main(root: Path, run: int) -> None:
    clock = SystemClock()
    remit = build(root, clock)
    remit.register_principal(PRINCIPAL, identifiers=["email:sam@acme.example"])
    if run == 0:
        remit.put_secret("billing.key", Secret("crash-canary"))
    agent = remit.register_agent(
        f"crash-bot-{run}", owner="sam@acme.example", ceiling=FAULT_CEILING
    )
    session = AgentSession.attest(remit, remit.create_join_token(agent.agent_id), clock=clock)
    rng = random.Random(run)
    started = time.monotonic()
    announced = False
    while time.monotonic() - started < MAX_SECONDS:
        task = session.open_task(principal=PRINCIPAL, intent=intent(call_budget=4))
        for i in range(rng.randint(2, 7)):  # past the budget sometimes: denials too
            tool = "billing/charge" if i % 3 == 2 else "docs/read"
            task.authorize(tool, {"i": i, "r": rng.random()})
            if not announced:
                print("ready", flush=True)
                announced = True
        if rng.random() < 0.3:
            task.end()
        elif rng.random() < 0.2:
            remit.revoke_task(task.task_id, reason="worker")
    remit.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
