"""A processor in a process of its own, built by the app's composition root from the environment, for the tests that
kill it: ``python -m tests.processor_child MESSAGE ATTEMPT``. Exit code 0 when the event completed, 1 when it failed
(the host would retry it)."""

from __future__ import annotations

import asyncio
import sys

from restricted_sender.entrypoints.edge import runtime


async def main(message: str, attempt: int) -> int:
    try:
        await runtime.process_message(message, attempt=attempt)
    except Exception as error:
        print(f"{type(error).__name__}: {error}", file=sys.stderr)
        return 1
    finally:
        await runtime.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], int(sys.argv[2]))))
