"""A Pulumi language host for Python programs, built on the Pulumi SDK's own LanguageRuntime server.

Why this exists: the Go language host (`pulumi-language-python`) lives in an untagged Go module that the
module proxy reachable from here refuses to serve. `scripts/setup` tries to build it first and falls back
to this host. It is started by the Pulumi CLI exactly like the Go one: `pulumi-language-python [flags]
<engine-address>`; it prints the port it listens on, then serves LanguageRuntime over gRPC.

It runs the program in its own process with the SDK's inline-program machinery (the same code the
Automation API uses for inline programs), loading the program's entry point (`__main__.py` or the
`main` of Pulumi.yaml) with runpy. Dynamic providers are started separately by the CLI through the
`pulumi-resource-pulumi-python` launcher.
"""

from __future__ import annotations

import os
import runpy
import signal
import sys
import threading
from concurrent import futures

import grpc
from pulumi.automation._server import LanguageServer
from pulumi.runtime.proto import language_pb2, language_pb2_grpc, plugin_pb2

from pulumi._version import _VERSION as SDK_VERSION  # noqa: E402


class ProgramLanguageServer(LanguageServer):
    """LanguageServer that runs a program directory instead of an inline function."""

    def __init__(self) -> None:
        super().__init__(program=lambda: None)

    @staticmethod
    def _entry_point(request) -> tuple[str, str]:
        info = request.info
        program_dir = info.program_directory or request.pwd or os.getcwd()
        entry = info.entry_point or request.program or "."
        path = os.path.join(program_dir, entry)
        if os.path.isdir(path):
            path = os.path.join(path, "__main__.py")
        return program_dir, path

    def Run(self, request, context):
        program_dir, path = self._entry_point(request)
        if not os.path.isfile(path):
            return language_pb2.RunResponse(error=f"no Python program at {path}")
        if request.pwd:
            os.chdir(request.pwd)
        if program_dir not in sys.path:
            sys.path.insert(0, program_dir)
        sys.argv = [path, *request.args[1:]]
        self.program = lambda: runpy.run_path(path, run_name="__main__")
        return super().Run(request, context)

    def Handshake(self, request, context):
        return language_pb2.LanguageHandshakeResponse()

    def GetPluginInfo(self, request, context):
        return plugin_pb2.PluginInfo(version=SDK_VERSION)

    def GetProgramDependencies(self, request, context):
        from importlib import metadata

        deps = [
            language_pb2.DependencyInfo(name=dist.metadata["Name"], version=dist.version)
            for dist in metadata.distributions()
        ]
        return language_pb2.GetProgramDependenciesResponse(dependencies=deps)

    def InstallDependencies(self, request, context):
        # Dependencies are installed by scripts/setup into the project's virtualenv.
        return iter(())


def main(argv: list[str]) -> int:
    from orphan_guard import exit_with_parent  # this script's directory is on sys.path

    exit_with_parent()
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[("grpc.max_receive_message_length", 400 * 1024 * 1024)],
    )
    language_pb2_grpc.add_LanguageRuntimeServicer_to_server(ProgramLanguageServer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    # The CLI ends a language host with SIGINT when the operation is over: stop quietly.
    stopped = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
