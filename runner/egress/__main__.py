"""``python3 -m runner.egress``: the proxy container's entry point (config on stdin, events on stdout)."""

from runner.egress.proxy import main

if __name__ == "__main__":
    raise SystemExit(main())
