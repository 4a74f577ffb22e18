"""`python -m pi_agent register|run|facts`: the device agent's command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from pi_agent.agent import Agent, AgentError, config_path, load_config, register
from pi_agent.facts import collect_facts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pi_agent",
        description="Distillery device agent: benchmarks ONNX students for a Distillery server.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", required=True)

    reg = sub.add_parser("register", help="enroll this device with a server (once)")
    reg.add_argument("--server", required=True, help="server URL, e.g. http://192.168.1.10:8000")
    reg.add_argument(
        "--enroll-token", required=True, help="a dse_ token from the server's Agents page"
    )
    reg.add_argument("--name", help="name shown on the Agents page (default: hostname)")
    reg.add_argument("--config", help="config file (default: ~/.config/distillery-agent.json)")
    reg.add_argument(
        "--cache-dir", help="where models are kept (default: ~/.cache/distillery-agent)"
    )

    run = sub.add_parser("run", help="claim and benchmark jobs until stopped")
    run.add_argument("--once", action="store_true", help="exit when the queue is empty")
    run.add_argument("--config", help="config file (default: ~/.config/distillery-agent.json)")

    sub.add_parser("facts", help="print the device facts sent to the server")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        if args.command == "facts":
            print(json.dumps(collect_facts(), indent=2))
            return 0
        if args.command == "register":
            path = config_path(args.config)
            config = register(args.server, args.enroll_token, args.name, path, args.cache_dir)
            print(f"registered as {config.name!r} (agent {config.agent_id}); config in {path}")
            return 0
        agent = Agent(load_config(config_path(args.config)))
        agent.install_signal_handlers()
        return agent.run(once=args.once)
    except AgentError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
