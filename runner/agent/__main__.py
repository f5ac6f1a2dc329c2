"""``python -m runner.agent -- CMD ARGS...``: run CMD as a stdio MCP server and bridge it to the host."""

import os
import sys

from runner.agent.app import main

if __name__ == "__main__":
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        # Skip interpreter teardown: nothing is left to clean up, and a worker
        # thread stuck reading stdin must not keep the agent alive.
        os._exit(code)
