"""The `ocean-c2d` command: one entry point, one subcommand per program the image runs.

Later issues add the operator itself and the configure, filter and publish steps as subcommands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ocean_c2d.identity import PACKAGE, package_version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PACKAGE, description="Ocean Protocol Compute-to-Data on Kubernetes."
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subcommands.add_parser("version", help="print the version and exit")
    subcommands.add_parser(
        "run", help="run the operator (in a cluster, or outside one with the current kubeconfig)"
    )
    subcommands.add_parser(
        "configure", help="stage step: fill the job's data volume with the inputs, algorithm and DDOs"
    )
    subcommands.add_parser("filter", help="stage step: judge the outputs (exit 0 pass, 51 block)")
    subcommands.add_parser(
        "publish", help="stage step: upload outputs and logs; the result list is the termination message"
    )
    subcommands.add_parser(
        "api", help="serve the operator-service-compatible API (/api/v1/operator/) over the cluster"
    )
    queue = subcommands.add_parser(
        "queue", help="where Workflows wait: one Workflow's position, or each environment's queue in order"
    )
    queue.add_argument("workflow", nargs="?", help="a Workflow: its position (default: every queue)")
    queue.add_argument("-n", "--namespace", help="the namespace (default: the kubeconfig's)")
    queue.add_argument("-e", "--environment", help="only this ComputeEnvironment's queue")
    subcommands.add_parser(
        "isolation-check",
        help="init step of algorithm and filter pods: exit 0 once egress is blocked, 23 if it never is",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"{PACKAGE} {package_version()}")
    elif args.command == "run":
        return run_operator()
    elif args.command == "configure":
        return run_configure_step()
    elif args.command == "filter":
        from ocean_c2d.steps.filter import main as filter_main

        return filter_main()
    elif args.command == "publish":
        from ocean_c2d.steps.publish import main as publish_main

        return publish_main()
    elif args.command == "api":
        import os

        from ocean_c2d.api.server import main as api_main

        return api_main(dict(os.environ))
    elif args.command == "queue":
        from ocean_c2d.queue_command import main as queue_main

        return queue_main(args)
    elif args.command == "isolation-check":
        from ocean_c2d.steps.isolation import main as isolation_main

        return isolation_main()
    return 0


def run_configure_step() -> int:
    import asyncio
    import os

    from ocean_c2d.steps.configure import main as configure_main

    return asyncio.run(configure_main(os.environ))


def run_operator() -> int:
    import asyncio
    import os

    from ocean_c2d.runner import run, setup_logging
    from ocean_c2d.settings import SettingsError, load_settings

    try:
        settings = load_settings(os.environ)
    except SettingsError as error:
        print(f"ocean-c2d: invalid settings:\n{error}", file=sys.stderr)
        return 2
    setup_logging(settings)
    asyncio.run(run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
