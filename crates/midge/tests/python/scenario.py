"""What the scenario scripts share: a failed check, and the command line
`SCRIPT HOST PORT SCENARIO` that runs one scenario and reports it."""

import sys


class Failure(Exception):
    """A check that did not hold; the message says what was expected and what came."""


def check(condition, message):
    if not condition:
        raise Failure(message)
    print(f"ok: {message}", flush=True)


def run(scenarios):
    """Runs the scenario named on the command line: `passed: NAME` and exit 0, or
    `FAIL: ...` on stderr and exit 1."""
    host, port, scenario = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    try:
        scenarios[scenario](host, port)
    except Failure as failure:
        print(f"FAIL: {failure}", file=sys.stderr, flush=True)
        sys.exit(1)
    print(f"passed: {scenario}", flush=True)
    sys.exit(0)
