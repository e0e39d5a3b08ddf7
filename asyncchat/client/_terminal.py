"""``python -m asyncchat.client``: the terminal chat client.

With a terminal it is interactive (prompt_toolkit, the ``asyncchat[client]``
extra): incoming lines appear above the input line, ``/quit`` or Ctrl-D
leaves, Ctrl-C exits at once.  Without one (stdin or stdout redirected) it is
scriptable: each line of stdin is sent, each line from the server is printed;
when stdin ends it sends ``/quit`` and waits (at most ``--wait`` seconds) for
the server to close, then exits 0::

    printf 'hello\\n/who\\n' | python -m asyncchat.client --name carol

What it sends is paced below the server's default rate limit (``--rate``
lines per second after a burst of ``--rate-burst``; see
:mod:`asyncchat.client._pacing`), so a piped file arrives whole; give the
server's limits if they differ, or ``--rate 0`` not to pace.

Every line from the server is printed with control characters escaped
(:func:`asyncchat.framing.sanitize`), so a peer cannot drive the terminal.
Exit status: 0 after leaving, 1 if the connection or the login failed or the
server ended the connection first, 2 for bad options, 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from .._version import __version__
from ..errors import ChatError, DependencyMissing
from ..framing import sanitize
from ._core import ChatClient, ConnectionClosed, connect_tcp
from ._pacing import DEFAULT_BURST, DEFAULT_RATE, Pacer

__all__ = ["build_parser", "format_line", "main"]

INSTALL_HINT = "the interactive client needs prompt_toolkit: pip install 'asyncchat[client]'"


def build_parser() -> argparse.ArgumentParser:
    """The options of ``python -m asyncchat.client``."""
    parser = argparse.ArgumentParser(
        prog="python -m asyncchat.client",
        description="Chat with an asyncchat server. Interactive on a terminal; "
        "with piped stdin, sends each line, then /quit.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"asyncchat {__version__}")
    transport = parser.add_mutually_exclusive_group()
    transport.add_argument("--tcp", dest="udp", action="store_false", help="connect over TCP (the default)")
    transport.add_argument("--udp", dest="udp", action="store_true", help="connect over UDP")
    parser.set_defaults(udp=False)
    parser.add_argument("--host", default="127.0.0.1", help="server address")
    parser.add_argument("--port", type=int, default=None, help="server port (default: 8080 for TCP, 8000 for UDP)")
    parser.add_argument("--name", "--nick", dest="name", required=True, help="your nickname")
    parser.add_argument("--tls", action="store_true", help="use TLS (TCP only)")
    parser.add_argument("--ca-file", metavar="PEM", help="CA certificates to verify the server with (implies --tls)")
    parser.add_argument(
        "--insecure", action="store_true", help="do not verify the server's certificate (implies --tls)"
    )
    parser.add_argument(
        "--keepalive",
        type=float,
        default=None,
        metavar="SECONDS",
        help="send /ping this often (default: 30 for UDP, never for TCP)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="after stdin ends (piped mode), wait this long at most for the server to close",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        metavar="LINES",
        help="send at most this many lines per second (below the server's --rate; 0: do not pace)",
    )
    parser.add_argument(
        "--rate-burst",
        type=int,
        default=DEFAULT_BURST,
        metavar="LINES",
        help="lines sent at once before --rate applies (below the server's --rate-burst)",
    )
    parser.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"], help="event loop")
    return parser


def format_line(line: str) -> str:
    """A line from the server as the terminal shows it: control characters escaped."""
    return sanitize(line)


def _ssl_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not (args.tls or args.ca_file or args.insecure):
        return None
    context = ssl.create_default_context(cafile=args.ca_file)
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def _connect(args: argparse.Namespace) -> ChatClient:
    if args.udp:
        from ._udp import connect_udp

        keepalive = 30.0 if args.keepalive is None else args.keepalive
        return await connect_udp(args.host, args.port or 8000, nick=args.name, keepalive=keepalive)
    return await connect_tcp(
        args.host, args.port or 8080, nick=args.name, ssl=_ssl_context(args), keepalive=args.keepalive
    )


async def _print_lines(chat: ChatClient, write: Callable[[str], None]) -> None:
    """Print every line from the server until the connection ends."""
    while True:
        try:
            line = await chat.receive_line()
        except ConnectionClosed:
            return
        write(format_line(line))


async def _send_paced(chat: ChatClient, line: str, pacer: Pacer) -> None:
    """Send *line* once *pacer* allows it (raises :class:`ConnectionClosed` like ``send_line``)."""
    loop = asyncio.get_running_loop()
    wait = pacer.delay(loop.time())
    if wait > 0:
        await asyncio.sleep(wait)  # a timer that fires a little early leaves the bucket in debt, not over
    pacer.take(loop.time())
    await chat.send_line(line)


def _is_quit(line: str) -> bool:
    return line.split(maxsplit=1)[0].lower() == "/quit" if line.strip() else False


class _StdinReader:
    """Feed a queue with stdin's lines, then ``None``, from a daemon thread.

    A thread because stdin may be a file, a pipe or a terminal; a daemon so a
    blocked ``readline`` never delays the exit.  At most 64 lines are read ahead.
    """

    def __init__(self, stdin: TextIO, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None]) -> None:
        self._stdin = stdin
        self._loop = loop
        self._queue = queue
        self._slots = threading.Semaphore(64)
        threading.Thread(target=self._run, name="asyncchat-stdin", daemon=True).start()

    def _run(self) -> None:
        try:
            while self._slots.acquire():
                line = self._stdin.readline()
                if not line:
                    break
                self._loop.call_soon_threadsafe(self._queue.put_nowait, line)
        except (OSError, ValueError):  # stdin closed or undecodable: treat as its end
            pass
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    def consumed(self) -> None:
        """One line was taken from the queue: read one more."""
        self._slots.release()


async def _piped(chat: ChatClient, stdin: TextIO, stdout: TextIO, wait: float, pacer: Pacer) -> int:
    def write(text: str) -> None:
        stdout.write(text + "\n")
        stdout.flush()

    printer = asyncio.create_task(_print_lines(chat, write))
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    printer.add_done_callback(lambda _: queue.put_nowait(None))
    reader = _StdinReader(stdin, asyncio.get_running_loop(), queue)
    left = False
    try:
        while (line := await queue.get()) is not None:
            reader.consumed()
            line = line.rstrip("\r\n").encode("utf-8", "replace").decode()
            if not line.strip():
                continue
            try:
                await _send_paced(chat, line, pacer)
            except ConnectionClosed:
                break
            if _is_quit(line):
                left = True
                break
        else:
            if not printer.done():
                with contextlib.suppress(ConnectionClosed):
                    await _send_paced(chat, "/quit", pacer)
                left = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await asyncio.shield(printer)
    finally:
        printer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await printer
        await chat.aclose()
    return 0 if left else 1


async def _interactive(chat: ChatClient, pacer: Pacer | None = None, *, input: Any = None, output: Any = None) -> int:
    """Run the prompt_toolkit client; *input*/*output* are for tests (pipe input, dummy output)."""
    pacer = Pacer(now=asyncio.get_running_loop().time()) if pacer is None else pacer
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    session: PromptSession[str] = PromptSession(input=input, output=output)
    status = 1
    with patch_stdout():
        printer = asyncio.create_task(_print_lines(chat, lambda text: print(text, flush=True)))
        try:
            while True:
                prompt = asyncio.create_task(session.prompt_async(lambda: f"{chat.nick}> "))
                await asyncio.wait({prompt, printer}, return_when=asyncio.FIRST_COMPLETED)
                if not prompt.done():  # the server ended the connection
                    prompt.cancel()
                    with contextlib.suppress(asyncio.CancelledError, EOFError, KeyboardInterrupt):
                        await prompt
                    break
                try:
                    text = prompt.result()
                except EOFError:  # Ctrl-D
                    text = "/quit"
                except KeyboardInterrupt:  # Ctrl-C
                    status = 130
                    break
                if not text.strip():
                    continue
                try:
                    await _send_paced(chat, text, pacer)  # a paste of many lines is paced too
                except ConnectionClosed:
                    break
                if _is_quit(text):
                    status = 0
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(5.0):
                            await asyncio.shield(printer)
                    break
        finally:
            printer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await printer
            await chat.aclose()
    return status


async def _run(args: argparse.Namespace, stdin: TextIO, stdout: TextIO, interactive: bool) -> int:
    try:
        chat = await _connect(args)
    except OSError as exc:
        sys.stderr.write(f"cannot connect to {args.host} port {args.port or (8000 if args.udp else 8080)}: {exc}\n")
        return 1
    except ChatError as exc:
        sys.stderr.write(f"login failed: {exc}\n")
        return 1
    pacer = Pacer(args.rate, args.rate_burst, now=asyncio.get_running_loop().time())
    if interactive:
        return await _interactive(chat, pacer)
    return await _piped(chat, stdin, stdout, args.wait, pacer)


def main(argv: Sequence[str] | None = None, *, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Run the terminal client with *argv*; return the exit status (see the module docstring)."""
    from ..cli import new_event_loop

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.udp and (args.tls or args.ca_file or args.insecure):
        parser.error("TLS options need --tcp")
    if args.rate < 0 or args.rate_burst < 1:
        parser.error(f"need --rate >= 0 and --rate-burst >= 1, not {args.rate:g} and {args.rate_burst}")
    stdin = sys.stdin if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    interactive = stdin.isatty() and stdout.isatty()
    if interactive:
        try:
            import prompt_toolkit  # noqa: F401
        except ImportError:
            sys.stderr.write(str(DependencyMissing(INSTALL_HINT)) + "\n")
            return 1
    try:
        with asyncio.Runner(loop_factory=new_event_loop(args.loop)) as runner:
            return runner.run(_run(args, stdin, stdout, interactive))
    except KeyboardInterrupt:
        return 130
