"""``mcp-runner images``: build and list the sandbox images, add a server from PyPI or npm, move images to a cluster.

Exit codes: 0 ok; 2 usage (a spec that cannot name a package, a missing option), and a failed build, load or
push of the runner's images (as before); ``add``: 1 when the package cannot be fetched, built or checked (the
message names the step and ends with its output's tail).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

USAGE, FAILED = 2, 1

ADD_HELP = """\
SPEC is ECOSYSTEM:NAME[VERSION]:
  pypi:NAME[==VERSION]         a PyPI project with a console script (wheels only)
  npm:NAME[@VERSION]           an npm package with a bin, scoped too: npm:@scope/name@1.2.3
Without a version the latest is built, and the profile printed pins it.

examples:
  mcp-runner images add pypi:mcp-server-calculator
  mcp-runner images add npm:@modelcontextprotocol/server-sequential-thinking@2026.8.31 --profile thinking
"""
BUILD_EXAMPLES = """\
examples:
  mcp-runner images build                               # only the missing ones (tags are content hashes)
  mcp-runner images build --force                       # all of them again
"""
LIST_EXAMPLES = """\
examples:
  mcp-runner images list                                # name, tag, and whether it is built
  mcp-runner images list --json
"""
LOAD_EXAMPLES = """\
examples:
  mcp-runner images load --kubernetes                   # the test cluster's containerd (make kubernetes)
  mcp-runner images load --kubernetes --containerd-socket /run/containerd/containerd.sock
"""
PUSH_EXAMPLES = """\
examples:
  mcp-runner images push --registry localhost:5000/mcp-runner
  mcp-runner images push --registry registry.internal/team/mcp   # then set kubernetes.registry to the same
"""


def _error(message: object, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _add(args: argparse.Namespace) -> int:
    from runner.image_checks import ImageBuildError
    from runner.image_packages import ensure_package, profile_snippet
    from runner.package_spec import PackageSpecError, parse_package

    try:
        spec = parse_package(args.spec)
    except PackageSpecError as exc:
        return _error(exc, USAGE)
    log = (lambda line: print(line, file=sys.stderr)) if not args.quiet else (lambda line: None)
    try:
        image = ensure_package(spec, log, force=args.force)
    except ImageBuildError as exc:
        return _error(exc, FAILED)
    print(image.ref)
    print(f"\n# paste under `profiles:` in your settings file (the service runs {image.command!r}):")
    print(profile_snippet(image, args.profile))
    return 0


def _build(args: argparse.Namespace) -> int:
    from runner.images import ALL_IMAGE_NAMES, ensure_images

    for name, ref in ensure_images(ALL_IMAGE_NAMES, force=args.force).items():
        print(f"{name:15} {ref}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from runner.images import ALL_IMAGE_NAMES, list_images

    rows: list[dict[str, Any]] = [
        {"name": name, "ref": ref, "state": "present" if present else "missing (run: mcp-runner images build)"}
        for name, ref, present in list_images(ALL_IMAGE_NAMES)
    ]
    rows += _added_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(f"{row['name']:15} {row['ref']:40} {row['state']}")
    return 0


def _added_rows() -> list[dict[str, Any]]:
    """Images built from packages and images with the agent injected, as ``images list`` shows them."""
    from runner.image_packages import package_images
    from runner.image_profiles import added_images

    rows: list[dict[str, Any]] = [{"name": str(p.spec), "ref": p.ref, "state": "present" if p.current else
              f"built on an older base (run: mcp-runner images add {p.spec})"} for p in package_images()]
    rows += [{"name": name, "ref": ref, "state": "present"} for name, ref in added_images().items()
             if name.startswith("with-agent:")]
    return rows


def _load(args: argparse.Namespace) -> int:
    from runner.image_profiles import added_images
    from runner.image_transfer import load_into_containerd

    if not args.kubernetes:
        return _error("images load: say where to (--kubernetes: the cluster's containerd)", USAGE)
    socket = Path(args.containerd_socket) if args.containerd_socket else None
    for name, ref in load_into_containerd(socket, added=added_images()).items():
        print(f"{name:15} {ref}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from runner.image_profiles import added_images
    from runner.image_transfer import push_to_registry

    if not args.registry:
        return _error("images push needs --registry HOST[:PORT]/PATH", USAGE)
    for name, ref in push_to_registry(args.registry, added=added_images()).items():
        print(f"{name:15} {ref}")
    return 0


def _run(args: argparse.Namespace) -> int:
    from runner.image_checks import ImageBuildError

    try:
        code: int = args.images_func(args)
    except ImageBuildError as exc:  # build, load, push: 2 as before `add` came (tests and scripts rely on it)
        return _error(exc, USAGE)
    return code


def add_images_parser(sub: Any, formatter: type[argparse.HelpFormatter] = argparse.RawDescriptionHelpFormatter) -> None:
    """Register ``images`` and its actions on the CLI's subcommands (``sub``: argparse's subparsers action)."""
    images = sub.add_parser(
        "images", help="build, list or add images (a server from PyPI or npm); load them into a cluster or push them",
        description="The sandbox images: content-hashed tags, built offline (`docker build --network none`).",
        epilog="examples:\n  mcp-runner images build\n  mcp-runner images add pypi:mcp-server-calculator\n"
               "  mcp-runner images list --json\n  mcp-runner images load --kubernetes",
        formatter_class=formatter,
    )
    actions = images.add_subparsers(dest="action", metavar="ACTION", required=True)
    build = actions.add_parser("build", help="build the runner's images that are missing",
                               epilog=BUILD_EXAMPLES, formatter_class=formatter)
    build.add_argument("--force", action="store_true", help="rebuild even when the image is present")
    build.set_defaults(images_func=_build)
    listing = actions.add_parser("list", help="the runner's images and the ones added, and whether they are built",
                                 epilog=LIST_EXAMPLES, formatter_class=formatter)
    listing.add_argument("--json", action="store_true", help="as a JSON array of {name, ref, state}")
    listing.set_defaults(images_func=_list)
    add = actions.add_parser("add", help="build a server image from a PyPI or npm package; print a profile for it",
                             epilog=ADD_HELP, formatter_class=formatter)
    add.add_argument("spec", metavar="SPEC", help="pypi:NAME[==VERSION] or npm:NAME[@VERSION]")
    add.add_argument("--profile", metavar="NAME", help="the profile name in the printed snippet")
    add.add_argument("--force", action="store_true", help="resolve and rebuild even when an image is present")
    add.add_argument("-q", "--quiet", action="store_true", help="no build output, only the result")
    add.set_defaults(images_func=_add)
    load = actions.add_parser("load", help="load the images into a cluster's nodes (no registry needed)",
                              epilog=LOAD_EXAMPLES, formatter_class=formatter)
    load.add_argument("--kubernetes", action="store_true", help="into the Kubernetes nodes' containerd")
    load.add_argument("--containerd-socket", metavar="PATH", help="containerd's socket (default: the test "
                      "cluster's, under /run/mcp-runner-kubernetes)")
    load.set_defaults(images_func=_load)
    push = actions.add_parser("push", help="push the images to a registry, as REGISTRY/NAME:TAG",
                              epilog=PUSH_EXAMPLES, formatter_class=formatter)
    push.add_argument("--registry", metavar="HOST[:PORT]/PATH", help="the registry to push to (required)")
    push.set_defaults(images_func=_push)
    images.set_defaults(func=_run)
