"""The kernel-bridge command: exec, eval, run, install, serve, test, version.

Start-up stays light: this module imports only the light part of ``bridge``; the kernel
machinery loads when a command needs a kernel.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import re
import secrets
import sys
from collections.abc import Sequence
from typing import Any

from bridge import BridgeError, ErrorInfo, ExecutionResult, ExecutionTimeout, KernelDied
from bridge._version import __version__

EXIT_OK, EXIT_FAILED, EXIT_BRIDGE = 0, 1, 2


def _kernel_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--python", help="interpreter that runs the kernel (needs ipykernel)")
    parser.add_argument(
        "--python-path", action="append", default=[], metavar="DIR", help="put DIR on sys.path"
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="kernel environment"
    )
    _gateway_options(parser)


def _gateway_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "gateway", "run the kernels on a Jupyter Kernel Gateway or Enterprise Gateway"
    )
    group.add_argument(
        "--gateway-url",
        metavar="URL",
        help="the gateway (default: $JUPYTER_GATEWAY_URL; local kernels if unset or '')",
    )
    group.add_argument(
        "--gateway-token",
        metavar="TOKEN",
        help="its token (default: $JUPYTER_GATEWAY_AUTH_TOKEN, which other users cannot see)",
    )
    group.add_argument(
        "--gateway-kernel", metavar="NAME", help="its kernel spec (default: the gateway's)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernel-bridge", description="Run Python in managed IPython kernels."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("exec", help="execute code ('-' reads it from stdin)")
    p.add_argument("code")
    p.add_argument("--capture-variables", action="store_true")
    p.add_argument(
        "--input", action="append", default=[], metavar="NAME=JSON", help="a global for the code"
    )
    _kernel_options(p)

    p = commands.add_parser("eval", help="evaluate one expression")
    p.add_argument("expr")
    _kernel_options(p)

    p = commands.add_parser("run", help="execute a Python file")
    p.add_argument("file")
    p.add_argument("--capture-variables", action="store_true")
    _kernel_options(p)

    p = commands.add_parser(
        "install",
        help="install packages into the kernels' Python",
        description="Install packages into the kernels' Python (uv when it is on PATH, pip "
        "otherwise): requirements such as 'requests>=2', or local wheels, sdists and project "
        "folders. Exit 1 if the installer fails, 2 if the install is refused.",
    )
    p.add_argument("packages", nargs="+", metavar="PKG", help="a requirement or a local path")
    p.add_argument("--upgrade", action="store_true", help="upgrade what is installed already")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--python", help="interpreter of the kernels (default: this one)")

    p = commands.add_parser(
        "test",
        help="run notebooks as tests",
        description="Run notebooks as tests, each on a fresh warm kernel; exit 1 if any fails.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="a notebook, or a folder to search")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per cell (default 300)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="notebooks run at once")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter for notebooks with a cell tagged 'parameters'",
    )
    p.add_argument("--compare", action="store_true", help="fail on outputs that differ")
    p.add_argument(
        "--sanitize", action="append", default=[], metavar="REGEX", help="mask before comparing"
    )
    p.add_argument("--sanitize-with", metavar="FILE", help="nbval-style sanitizer file")
    p.add_argument("--write", metavar="DIR", help="write the executed notebooks under DIR")
    p.add_argument("--junit-xml", metavar="FILE", help="write a JUnit XML report to FILE")
    p.add_argument("--python", help="interpreter that runs the kernels (needs ipykernel)")

    p = commands.add_parser(
        "serve",
        help="run the HTTP service (a Jupyter Server extension)",
        description="Run the HTTP service. Jupyter Server options pass through as "
        "--Class.trait=value (for example --ServerApp.base_url=/bridge/).",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9000, help="port (default 9000; 0 picks a free one)")
    p.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=["debug", "info", "warning", "error", "critical"],
    )
    p.add_argument(
        "--token",
        help="the token clients send (default: $JUPYTER_TOKEN_FILE's, else a generated one); "
        "on a command line every user sees it: prefer JUPYTER_TOKEN_FILE",
    )
    p.add_argument("--pool-size", type=int, default=2, help="warm kernels (default 2)")
    p.add_argument("--python", help="interpreter that runs the kernels (needs ipykernel)")
    p.add_argument(
        "--python-paths", default="", metavar="A:B", help="folders for the kernels' sys.path"
    )
    p.add_argument("--root", help="folder /execute-file reads from (default: this one)")
    p.add_argument("--timeout", type=float, default=30.0, help="default call timeout, seconds")
    p.add_argument(
        "--watch-stdin",
        action="store_true",
        help="stop (as on SIGTERM) when standard input reaches its end: a host that started the "
        "service holds a pipe open, so its exit, even a killed one, stops the service",
    )
    _gateway_options(p)

    commands.add_parser("version", help="print the versions")
    return parser


_PASS_THROUGH = re.compile(r"--[A-Za-z]\w*\.[A-Za-z_]\w*(=.*)?$")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _serve(args: argparse.Namespace, extra: Sequence[str]) -> int:
    """Run Jupyter Server with the kernel-bridge extension until Ctrl-C or SIGTERM."""
    from .token import find_token, keep_in_file

    found = find_token(args.token)
    token = found.value
    if not token.strip():
        raise SystemExit("kernel-bridge: error: the token must not be empty")
    if not _is_loopback(args.host) and found.generated:
        raise SystemExit(
            f"kernel-bridge: error: --host {args.host} is reachable from other machines: "
            "give it a token of your own in a private file named by JUPYTER_TOKEN_FILE "
            "(this service runs any code it is sent)"
        )
    if args.root is not None and not os.path.isdir(args.root):
        raise SystemExit(f"kernel-bridge: error: --root {args.root} is not a folder")
    if args.pool_size < 1:
        raise SystemExit("kernel-bridge: error: --pool-size must be at least 1")
    import signal

    try:
        from traitlets.config import Config

        from bridge.server import BridgeApp
    except ImportError as exc:
        raise SystemExit(
            f"kernel-bridge: error: serve needs Jupyter Server ({exc}): "
            "pip install 'kernel-bridge[server]'"
        ) from None

    config = Config()
    server = config.ServerApp
    server.ip = args.host
    server.port = args.port
    server.port_retries = 0  # the port asked for, or a clear error
    server.open_browser = False
    server.allow_unauthenticated_access = False  # every route of the server needs the token
    server.log_level = getattr(logging, args.log_level.upper())  # traitlets knows WARN, not WARNING
    server.root_dir = os.path.abspath(args.root or os.getcwd())
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        server.allow_root = True  # containers and CI run as root; the token still guards
    config.IdentityProvider.token = token
    # Cookies are for Jupyter Server's own pages (JupyterLab), never for the bridge's routes:
    # not sent along from other sites, and signed with a secret of this run only, so they die
    # with the token unless a cookie secret is configured (ServerApp.cookie_secret[_file]).
    config.IdentityProvider.cookie_options = {"samesite": "Strict"}
    server.tornado_settings = {"xsrf_cookie_kwargs": {"samesite": "Strict"}}
    if not any("cookie_secret" in arg for arg in extra):
        server.cookie_secret = secrets.token_bytes(32)
    app = config.BridgeApp
    app.pool_size = args.pool_size
    if args.python:
        app.python = args.python
    app.python_paths = [p for p in args.python_paths.split(os.pathsep) if p]
    app.root = server.root_dir
    app.timeout = args.timeout
    app.announce = True
    # Gateway mode is Jupyter Server's own (GatewayClient, which reads JUPYTER_GATEWAY_URL and
    # JUPYTER_GATEWAY_AUTH_TOKEN too): its /api/kernels then lists the gateway's kernels.
    if args.gateway_url is not None:
        config.GatewayClient.url = args.gateway_url.strip() or None
    if args.gateway_token is not None:
        config.GatewayClient.auth_token = args.gateway_token
    if args.gateway_kernel:
        app.gateway_kernel_name = args.gateway_kernel
    # A setting the service refuses stops it here, instead of a service running without it.
    server.reraise_server_extension_failures = True
    try:
        serverapp = BridgeApp.initialize_server(argv=list(extra), config=config)  # type: ignore[no-untyped-call]
    except Exception as exc:
        print(f"kernel-bridge: error: {exc}", file=sys.stderr)
        return EXIT_BRIDGE
    extension = serverapp.extension_manager.extension_points[BridgeApp.name].app
    keep_in_file(found)
    extension.token_file = found.path
    try:
        # Ctrl-C stops at once (no "shut down? y/n" prompt) and shuts every kernel down.
        signal.signal(signal.SIGINT, serverapp._signal_stop)
        if args.watch_stdin:
            _stop_at_stdin_end()  # SIGTERM: the same clean stop, the token file removed too
        serverapp.start()
    finally:
        found.remove()
    return EXIT_BRIDGE if getattr(extension, "start_error", None) else EXIT_OK


def _stop_at_stdin_end() -> None:
    """SIGTERM this process (the server's own clean stop) once stdin reaches its end."""
    import signal
    import threading

    def watch() -> None:
        try:
            while sys.stdin.buffer.read(65536):
                pass
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="kernel-bridge-stdin", daemon=True).start()


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"kernel-bridge: error: {what} wants NAME=VALUE, got {item!r}")
        out[name] = value
    return out


def _inputs(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for name, text in _pairs(items, "--input").items():
        try:
            out[name] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SystemExit(f"kernel-bridge: error: --input {name}: not JSON: {exc}") from None
    return out


def print_output(output: dict[str, Any]) -> None:
    """One output the readable way: streams to their stream, values as text, errors to stderr."""
    kind = output["output_type"]
    if kind == "stream":
        stream = sys.stderr if output["name"] == "stderr" else sys.stdout
        stream.write(output["text"])
        stream.flush()
    elif kind in ("display_data", "execute_result"):
        data = output["data"]
        text = data.get("text/plain", "")
        others = sorted(k for k in data if k not in ("text/plain", "application/json"))
        print(text, flush=True)
        if others:
            print(f"[also as {', '.join(others)}]", flush=True)
    elif kind == "error":
        print(ErrorInfo.from_content(output).traceback, file=sys.stderr, flush=True)


def print_result(result: ExecutionResult, *, outputs: bool = True) -> None:
    """The readable form: outputs in order (unless printed live already), stdout to stdout,
    errors and stderr to stderr."""
    if outputs:
        for output in result.outputs:
            print_output(output)
    if result.error is not None and not any(o["output_type"] == "error" for o in result.outputs):
        print(result.error.traceback, file=sys.stderr)
    sys.stdout.flush()


def _run(args: argparse.Namespace) -> int:
    from bridge import Bridge

    env = _pairs(args.env, "--env")
    inputs = _inputs(getattr(args, "input", []))
    # Without --json, outputs are printed as the kernel makes them.
    live = None if args.json else print_output
    args.live = live is not None
    with Bridge(
        pool_size=1,
        python=args.python,
        env=env,
        python_paths=args.python_path,
        gateway_url=args.gateway_url,
        gateway_token=args.gateway_token,
        gateway_kernel_name=args.gateway_kernel,
    ) as b:
        if args.command == "exec":
            code = sys.stdin.read() if args.code == "-" else args.code
            result = b.execute(
                code,
                timeout=args.timeout,
                capture_variables=args.capture_variables,
                inputs=inputs,
                on_output=live,
            )
        elif args.command == "eval":
            result = b.evaluate(args.expr, timeout=args.timeout, on_output=live)
        else:
            result = b.execute_file(
                args.file,
                timeout=args.timeout,
                capture_variables=args.capture_variables,
                on_output=live,
            )
        # Printed before the bridge closes: the kernel's polite shutdown (0.1 to 0.3 s) then
        # goes on after the answer is out, not before it.
        if args.json:
            print(json.dumps(result.to_dict(), indent=2, default=str), flush=True)
        else:
            print_result(result, outputs=False)
    return EXIT_OK if result.success else EXIT_FAILED


def _install(args: argparse.Namespace) -> int:
    """Install packages into the kernels' Python; no kernel is started."""
    from bridge import Bridge

    b = Bridge(pool_size=0, python=args.python, gateway_url="")
    try:
        result = b.install(args.packages, upgrade=args.upgrade, timeout=args.timeout)
    finally:
        b.close()
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        if result.success:
            print(f"installed: {', '.join(result.installed)} ({result.installer})")
        else:
            print(f"kernel-bridge: {result.installer} failed", file=sys.stderr)
    return EXIT_OK if result.success else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if args.command != "serve" or not _PASS_THROUGH.match(a)]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if args.command == "serve":
        return _serve(args, extra)
    # The command reports failures itself; the library's warnings would say them twice.
    logging.basicConfig(level=logging.ERROR, format="kernel-bridge: %(message)s")
    if args.command == "version":
        print(f"kernel-bridge {__version__}")
        print(f"Python {sys.version.split()[0]} ({sys.executable})")
        return EXIT_OK
    try:
        if args.command == "test":
            from bridge.notebooks.cli import run_tests

            return run_tests(args)
        if args.command == "install":
            return _install(args)
        return _run(args)
    except (ExecutionTimeout, KernelDied) as exc:
        if exc.result is not None and not args.json:
            print_result(exc.result, outputs=not getattr(args, "live", False))
        print(f"kernel-bridge: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_BRIDGE
    except BridgeError as exc:
        print(f"kernel-bridge: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_BRIDGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
