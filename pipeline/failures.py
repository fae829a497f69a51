"""Transient or permanent: the one rule that decides whether a failed dialogue is retried on resume.

A **permanent** reject is a decision about the data (a gate said no, the model's output stayed
invalid after its repair budget, a near-duplicate); re-running would decide the same. A
**transient** reject means the infrastructure failed (connection refused or reset, a timeout, 429
or 5xx after the retry budget, a dead actor, CUDA out of memory, a file missing or unreadable on a
network mount); the dialogue itself is fine and a resumed build runs it again.

`classify` looks at an exception (or at a message, for errors that arrive as text, such as
ray.data.llm's `__inference_error__`). Anything it does not recognise is permanent, so an unknown
bug is never retried forever. This module imports nothing heavy: it matches class names through the
exception's MRO, so it knows openai, httpx, requests, torch and Ray errors without importing them.
"""

from __future__ import annotations

import errno

TRANSIENT = "transient"
PERMANENT = "permanent"

# Class names (anywhere in the MRO) of infrastructure failures.
_TRANSIENT_CLASSES = frozenset(
    {
        "ConnectionError",  # builtin (refused, reset, aborted, broken pipe) and requests'
        "TimeoutError",
        "APIConnectionError",  # openai: transport failed (includes APITimeoutError)
        "APITimeoutError",
        "RateLimitError",  # openai: 429 after the client's retries
        "InternalServerError",  # openai: 5xx after the client's retries
        "TransportError",  # httpx: connect/read/write errors and timeouts
        "TimeoutException",
        "OutOfMemoryError",  # torch.cuda.OutOfMemoryError
        "RayActorError",  # ray: the actor died or is unreachable
        "ActorDiedError",
        "ActorUnavailableError",
        "WorkerCrashedError",
        "NodeDiedError",
        "ObjectLostError",
        "OwnerDiedError",
        "LocalRayletDiedError",
    }
)
# OSErrors of a flaky (network) file system or a full disk, when they name a path.
_TRANSIENT_ERRNOS = frozenset({errno.ENOENT, errno.EIO, errno.ESTALE, errno.ENOSPC})
_TRANSIENT_TEXT = ("cuda out of memory", "cuda error: out of memory", "connection refused", "connection reset")
_TRANSIENT_STATUS = frozenset({408, 409, 425, 429})


def classify(err: BaseException | str) -> str:
    """TRANSIENT if `err` is an infrastructure failure worth retrying later, else PERMANENT.

    An exception may decide for itself with a boolean `transient` attribute (LLMError does). Causes
    are followed (`raise ... from`, Ray's `RayTaskError.cause`), so a wrapped transient error stays
    transient.
    """
    seen: set[int] = set()
    current: BaseException | str | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_transient(current):
            return TRANSIENT
        if isinstance(current, str):
            break
        context = None if current.__suppress_context__ else current.__context__
        current = getattr(current, "cause", None) or current.__cause__ or context
        if not isinstance(current, BaseException):
            current = None
    return PERMANENT


def _is_transient(err: BaseException | str) -> bool:
    if isinstance(err, str):
        text = err.lower()
        return any(fragment in text for fragment in _TRANSIENT_TEXT)
    declared = getattr(err, "transient", None)
    if isinstance(declared, bool):
        return declared
    if any(cls.__name__ in _TRANSIENT_CLASSES for cls in type(err).__mro__):
        return True
    status = getattr(err, "status_code", None)
    if isinstance(status, int) and (status in _TRANSIENT_STATUS or status >= 500):
        return True
    if isinstance(err, OSError) and err.errno in _TRANSIENT_ERRNOS and err.filename is not None:
        return True
    return isinstance(err, MemoryError) or _is_transient(str(err))
