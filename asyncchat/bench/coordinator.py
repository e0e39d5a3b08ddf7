"""The coordinator of ``python -m asyncchat.bench``: starts the workers and steps them through a run.

The workers (:mod:`.worker`) are separate processes (``spawn``), driven over
pipes with the messages listed in :mod:`.worker`'s docstring.  The
coordinator merges their reports into one result (a plain dict, printed as
text or JSON by :func:`asyncchat.bench.main`).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import time
from multiprocessing.connection import Connection, wait
from typing import Any, TextIO

from .stats import Histogram, WorkerPlan, read_cpu_seconds, read_rss_bytes
from .worker import worker_main

__all__ = ["SATURATED_CPU", "Coordinator"]

#: Generator CPU (fraction of one core) above which the result is flagged.
SATURATED_CPU = 0.9


class Coordinator:
    """Starts the workers, steps them through the run, and gathers the result."""

    def __init__(self, args: argparse.Namespace, plans: list[WorkerPlan], progress: TextIO | None) -> None:
        self.args = args
        self.plans = plans
        self.progress = progress
        self.conns: list[Connection] = []
        self.procs: list[multiprocessing.process.BaseProcess] = []
        self.result: dict[str, Any] = {}
        self._lines = [0] * len(plans)
        self._sent = [0] * len(plans)
        self._shown = (0.0, 0, 0)
        self._early: dict[int, tuple[Any, ...]] = {}

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        for plan in self.plans:
            parent, child = context.Pipe()
            proc = context.Process(target=worker_main, args=(child, plan), name=f"bench-worker-{plan.worker}")
            proc.daemon = True
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def stop(self) -> None:
        """Tell every worker to stop, then make sure each process is gone."""
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("stop",))
        deadline = time.monotonic() + 10
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        for conn in self.conns:
            conn.close()

    def broadcast(self, *message: Any) -> None:
        for conn in self.conns:
            conn.send(message)

    def _receive(self, conn: Any) -> tuple[Any, ...] | None:
        """Read one message; handle progress and errors; return anything else."""
        index = self.conns.index(conn)
        try:
            message: tuple[Any, ...] = conn.recv()
        except EOFError:
            raise RuntimeError(f"worker {index} exited unexpectedly") from None
        if message[0] == "error":
            raise RuntimeError(message[1])
        if message[0] == "progress":
            self._lines[index], self._sent[index] = message[1], message[2]
            self._show()
            return None
        return message

    def gather(self, kind: str, timeout: float) -> list[Any]:
        """One *kind* message from every worker (progress messages are shown meanwhile)."""
        replies: dict[int, Any] = {}
        for index, message in self._early.items():
            if message[0] != kind:
                raise RuntimeError(f"worker {index} sent {message[0]!r} while {kind!r} was expected")
            replies[index] = message[1]
        self._early.clear()
        deadline = time.monotonic() + timeout
        while len(replies) < len(self.conns):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"workers did not report {kind!r} within {timeout:g} s")
            for conn in wait([c for i, c in enumerate(self.conns) if i not in replies], timeout=left):
                received = self._receive(conn)
                if received is None:
                    continue
                message = received
                index = self.conns.index(conn)  # type: ignore[arg-type]
                if message[0] != kind:
                    raise RuntimeError(f"worker {index} sent {message[0]!r} while {kind!r} was expected")
                replies[index] = message[1]
        return [replies[i] for i in range(len(self.conns))]

    def _show(self) -> None:
        if self.progress is None:
            return
        now, lines, sent = time.monotonic(), sum(self._lines), sum(self._sent)
        then, lines0, sent0 = self._shown
        if then and now - then >= 0.4:
            rate, msgs = (lines - lines0) / (now - then), (sent - sent0) / (now - then)
            self.progress.write(f"\r  {rate:14,.0f} deliveries/s {msgs:12,.0f} messages/s   ")
            self.progress.flush()
            self._shown = (now, lines, sent)
        elif not then:
            self._shown = (now, lines, sent)

    def sleep_until(self, when_ns: int) -> None:
        """Sleep until *when_ns* (monotonic), showing progress; keep other messages for :meth:`gather`."""
        while (left := (when_ns - time.monotonic_ns()) / 1e9) > 0:
            for conn in wait([c for i, c in enumerate(self.conns) if i not in self._early], timeout=left):
                message = self._receive(conn)
                if message is not None:
                    self._early[self.conns.index(conn)] = message  # type: ignore[arg-type]

    def run(self) -> dict[str, Any]:
        args = self.args
        pid = args.server_pid
        result = self.result
        self.start()
        setup = args.setup_timeout + 30
        self.gather("up", 60)
        rss_before = read_rss_bytes(pid) if pid else None
        self.broadcast("login")
        ready = self.gather("ready", setup)
        rss_after = read_rss_bytes(pid) if pid else None
        logged_in = sum(r["ready"] for r in ready)
        result["logged_in"] = logged_in
        result["login_seconds"] = round((max(r["last"] for r in ready) - min(r["first"] for r in ready)) / 1e9, 3)
        errors: dict[str, int] = {}
        samples: list[str] = []
        server: dict[str, Any] | None = None
        if pid:
            server = {"pid": pid, "rss_before_bytes": rss_before, "rss_after_login_bytes": rss_after}
            if rss_before is not None and rss_after is not None and logged_in:
                server["memory_per_member_bytes"] = round((rss_after - rss_before) / logged_in, 1)
        if args.mode == "idle":
            cpu0 = read_cpu_seconds(pid) if pid else 0.0
            time.sleep(args.duration)
            if server is not None:
                server["rss_end_bytes"] = read_rss_bytes(pid)
                server["cpu_percent"] = round(100 * (read_cpu_seconds(pid) - cpu0) / args.duration, 1)
            self.broadcast("report")
            held = self.gather("held", 30)
            result["held"] = sum(h["held"] for h in held)
            _merge_errors(errors, samples, held)  # running totals: they include the login errors
            result.update(errors=errors, error_samples=samples, server=server)
            return result
        self.broadcast("sync")
        synced = self.gather("synced", setup)
        result["counting"] = sum(s["counting"] for s in synced)
        t0 = time.monotonic_ns() + 100_000_000
        tw = t0 + int(args.warmup * 1e9)
        te = tw + int(args.duration * 1e9)
        self.broadcast("start", t0, tw, te)
        self.sleep_until(tw)
        cpu0 = read_cpu_seconds(pid) if pid else 0.0
        self.sleep_until(te)
        if server is not None:
            server["cpu_percent"] = round(100 * (read_cpu_seconds(pid) - cpu0) / args.duration, 1)
            server["rss_end_bytes"] = read_rss_bytes(pid)
        if self.progress is not None:
            self.progress.write("\r" + " " * 60 + "\r")
        sent = self.gather("sent", 30)
        per_room = [sum(column) for column in zip(*sent, strict=True)]
        self.broadcast("expect", per_room)
        results = self.gather("result", args.drain_timeout + 30)
        _merge_errors(errors, samples, results)
        hist = Histogram.empty()
        for r in results:
            hist.merge(r["hist"])
        deliveries = sum(r["deliveries"] for r in results)
        expected = sum(r["expected"] for r in results)
        udp_deliveries = sum(r["deliveries_udp"] for r in results)
        udp_expected = sum(r["expected_udp"] for r in results)
        tcp_loss = max(0, expected - udp_expected - (deliveries - udp_deliveries))
        udp_loss = max(0, udp_expected - udp_deliveries)
        cpu = [round(r["cpu"], 3) for r in results]
        result.update(
            messages=sum(r["messages"] for r in results),
            messages_per_s=round(sum(r["window_messages"] for r in results) / args.duration, 1),
            deliveries=deliveries,
            deliveries_per_s=round(sum(r["window_deliveries"] for r in results) / args.duration, 1),
            expected=expected,
            loss=tcp_loss + udp_loss,
            loss_by_transport={"tcp": tcp_loss, "udp": udp_loss},
            loss_fraction=round((tcp_loss + udp_loss) / expected, 6) if expected else 0.0,
            udp={
                "deliveries": udp_deliveries,
                "expected": udp_expected,
                "loss": udp_loss,
                "loss_fraction": round(udp_loss / udp_expected, 6) if udp_expected else 0.0,
                "window_resets": sum(r["window_resets"] for r in results),
                "retries": sum(r["udp_retries"] for r in results),
            },
            extra=max(0, deliveries - expected),
            latency_ms=_latency(hist),
            errors=errors,
            error_samples=samples,
            other_lines=sum(r["other_lines"] for r in results),
            generator={"cpu": cpu, "saturated": max(cpu) >= SATURATED_CPU},
            server=server,
        )
        return result


def _merge_errors(errors: dict[str, int], samples: list[str], reports: list[dict[str, Any]]) -> None:
    for report in reports:
        for kind, count in report["errors"].items():  # each report is its worker's running total
            errors[kind] = errors.get(kind, 0) + count
        for sample in report["samples"]:
            if sample not in samples and len(samples) < 10:
                samples.append(sample)


def _latency(hist: Histogram) -> dict[str, float]:
    points = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}
    latency = {name: hist.percentile(p) / 1000 for name, p in points.items()}
    latency["max"] = hist.max / 1000
    latency["samples"] = hist.total
    return latency
