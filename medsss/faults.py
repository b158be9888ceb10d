"""Deliberate faults, for the tests that prove a killed run resumes where it stopped and that a
faulty engine costs only the problems it fails.

``MEDSSS_KILL_AT=<run-dir suffix>@<step>`` SIGKILLs the process when a training run whose
directory ends with that suffix finishes that optimizer step (before that step's checkpoint is
written: Lightning runs checkpoint callbacks last). Nothing happens when the variable is unset.

``MEDSSS_FAULT_GENERATE=<rule>[,<rule>...]`` makes the generation backend of every stage that
generates (synthesize, curriculum, evaluate) raise on chosen engine calls, inside the retries of
:mod:`medsss.generation.resilient` (so they are retried, halved or given up exactly as real engine
errors would be). Engine calls (``generate`` and streaming ``submit``, retries included) are
numbered from 1 in the process. A rule is a kind, ``raise`` (an :class:`InjectedFault`, a
RuntimeError) or ``oom`` (torch's CUDA ``OutOfMemoryError``), and when it fires:

- ``raise@3``: on call 3; ``raise@3x2``: on calls 3 and 4 (two tries of one call fail, the third
  succeeds);
- ``raise~TEXT``: on every call holding a request whose messages or prefill contain TEXT (a
  poisoned problem: its tries all fail, it is recorded as failed, the others go on; TEXT may not
  contain a comma);
- ``oom>8``: on every call of more than 8 requests (the engine fits 8: the batch is halved until it
  does); ``oom@2``: on call 2 only.

The first matching rule fires. Each injected error counts in the stage's ``injected_faults``
metric. Nothing happens when the variable is unset; a malformed rule is an error naming it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from medsss.generation.base import Backend, Completion, GenerationRequest
from medsss.generation.resilient import BackendWrapper

KILL_AT_ENV = "MEDSSS_KILL_AT"


def kill_step(run_dir: str | Path, environ: dict[str, str] | None = None) -> int | None:
    """The optimizer step at which a run in ``run_dir`` is to be killed, or None."""
    spec = (os.environ if environ is None else environ).get(KILL_AT_ENV, "")
    if not spec:
        return None
    suffix, _, step = spec.rpartition("@")
    if not suffix or not step.isdigit():
        raise ValueError(f"{KILL_AT_ENV}={spec!r}: expected <run-dir suffix>@<optimizer step>")
    return int(step) if Path(run_dir).resolve().as_posix().endswith(suffix.rstrip("/")) else None


def kill_callbacks(run_dir: str | Path) -> list:
    """A Lightning callback that SIGKILLs this process at the configured step (none when unset)."""
    step = kill_step(run_dir)
    if step is None:
        return []
    from lightning.pytorch.callbacks import Callback

    class KillAtStep(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if trainer.global_step >= step:
                os.kill(os.getpid(), signal.SIGKILL)

    return [KillAtStep()]


# --------------------------------------------------------------------------------------------
# generation faults (MEDSSS_FAULT_GENERATE)

FAULT_GENERATE_ENV = "MEDSSS_FAULT_GENERATE"

log = logging.getLogger(__name__)

_RULE = re.compile(r"(?P<kind>raise|oom)(?:@(?P<call>\d+)(?:x(?P<times>\d+))?|~(?P<text>.+)|>(?P<above>\d+))")


class InjectedFault(RuntimeError):
    """An engine error raised on purpose (``MEDSSS_FAULT_GENERATE``)."""


@dataclass(frozen=True)
class FaultRule:
    """One rule of ``MEDSSS_FAULT_GENERATE``: what it raises (``raise`` or ``oom``) and when."""

    spec: str
    kind: str
    calls: range | None = None  # these engine call numbers
    text: str | None = None  # calls holding a request whose prompt contains this
    above: int | None = None  # calls of more requests than this

    def fires(self, call: int, requests: Sequence[GenerationRequest]) -> bool:
        if self.calls is not None:
            return call in self.calls
        if self.text is not None:
            return any(self.text in r.prefill or any(self.text in m["content"] for m in r.messages)
                       for r in requests)
        return self.above is not None and len(requests) > self.above


def parse_fault_rules(spec: str) -> list[FaultRule]:
    """The rules of a ``MEDSSS_FAULT_GENERATE`` value (see the module docstring)."""
    rules = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        match = _RULE.fullmatch(entry)
        if match is None:
            raise ValueError(f"{FAULT_GENERATE_ENV}={spec!r}: cannot read the rule {entry!r}; expected "
                             "raise@N, raise@NxK, raise~TEXT or raise>K (or the same with oom)")
        kind, call, times, text, above = match.group("kind", "call", "times", "text", "above")
        if call is not None:
            if int(call) < 1 or (times is not None and int(times) < 1):
                raise ValueError(f"{FAULT_GENERATE_ENV}={spec!r}: {entry!r}: calls are numbered from 1 "
                                 "and a rule fires at least once")
            rules.append(FaultRule(entry, kind, calls=range(int(call), int(call) + int(times or 1))))
        elif text is not None:
            rules.append(FaultRule(entry, kind, text=text))
        else:
            rules.append(FaultRule(entry, kind, above=int(above)))
    return rules


def _out_of_memory(message: str) -> Exception:
    import torch

    return torch.cuda.OutOfMemoryError(f"CUDA out of memory ({message})")


class FaultInjectingBackend(BackendWrapper):
    """``backend`` whose engine calls raise where ``rules`` say, before reaching the engine."""

    def __init__(self, backend: Backend, rules: list[FaultRule]) -> None:
        super().__init__(backend)
        self.rules = rules
        self.calls = 0  # engine calls so far, the one being made included

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Completion]]:
        self._fail_if_told(requests, "generate")
        return self.backend.generate(requests)

    def submit(self, requests: Sequence[GenerationRequest]) -> int:
        self._fail_if_told(requests, "submit")
        return self._streaming_backend().submit(requests)

    def _fail_if_told(self, requests: Sequence[GenerationRequest], what: str) -> None:
        self.calls += 1
        rule = next((r for r in self.rules if r.fires(self.calls, requests)), None)
        if rule is None:
            return
        self.stats.injected_faults += 1
        message = (f"injected by {FAULT_GENERATE_ENV} rule {rule.spec!r} on engine call {self.calls}, "
                   f"{what} of {len(requests)} request{'' if len(requests) == 1 else 's'}")
        raise _out_of_memory(message) if rule.kind == "oom" else InjectedFault(message)


def inject_generation_faults(backend: Backend, environ: Mapping[str, str] | None = None) -> Backend:
    """``backend`` with the faults ``MEDSSS_FAULT_GENERATE`` asks for; ``backend`` itself when unset."""
    spec = (os.environ if environ is None else environ).get(FAULT_GENERATE_ENV, "")
    rules = parse_fault_rules(spec)
    if not rules:
        return backend
    log.warning("%s=%s: generation faults will be injected", FAULT_GENERATE_ENV, spec)
    return FaultInjectingBackend(backend, rules)
