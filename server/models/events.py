"""Model lifecycle events (loading, loaded, unloaded, a failed load, a crash) and the hub that fans them out.

The registry publishes an event at each change of a model's state; subscribers (the admin API's event stream)
each get a bounded queue. Publishing never waits: a subscriber whose queue is full has fallen behind and is
dropped (its next read raises SlowClientError), so a client that stops reading can neither block the registry
nor make the server hold events for it without bound. Publish and read on the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from server.errors import SlowClientError

logger = logging.getLogger(__name__)

SUBSCRIBER_QUEUE_EVENTS = 256  # events one subscriber may have unread before it is dropped
RECENT_EVENTS = 32  # the last events, kept for the admin API's live view

ModelStatusValue = Literal["loading", "loaded", "unloaded"]
# Why a model went from loaded (or loading) to unloaded.
UnloadReason = Literal["requested", "idle", "evicted", "reload", "crashed", "load_failed", "shutdown"]


@dataclass(frozen=True)
class ModelEvent:
    """A model's new status (`event` "model_status"), or the models file re-read (`event` "models_reload",
    `model` "*"): llama.cpp router mode's event names."""

    model: str
    event: Literal["model_status", "models_reload"] = "model_status"
    status: ModelStatusValue | None = None
    reason: UnloadReason | None = None
    failed: bool = False
    message: str | None = None  # a failure's message, as a client of the model was told
    load_s: float | None = None  # how long a load took (on "loaded")
    time: float = field(default_factory=time.time)

    def wire(self) -> dict[str, object]:
        """The event as llama.cpp's `/models/sse` sends it: `{"model", "event", "data"}`."""
        when = round(self.time, 3)
        if self.event == "models_reload":
            return {"model": self.model, "event": self.event, "data": {"time": when}}
        data: dict[str, object] = {"status": self.status, "time": when}
        if self.reason is not None:
            data["reason"] = self.reason
        if self.failed:
            data["failed"] = True
        if self.message is not None:
            data["message"] = self.message
        if self.load_s is not None:
            data["load_seconds"] = round(self.load_s, 3)
        return {"model": self.model, "event": self.event, "data": data}


@dataclass(frozen=True)
class ModelState:
    """A model's status as the admin API shows it, with its memory while loaded and its last failure."""

    status: ModelStatusValue
    resident_bytes: int | None = None  # the worker's resident memory, else the expected size
    in_flight: int = 0  # requests holding it and streams its engine runs
    idle_s: float | None = None
    failure: str | None = None  # the last failed load or crash, until it next loads
    restarts: int = 0


class ModelEventHub:
    def __init__(self, queue_events: int = SUBSCRIBER_QUEUE_EVENTS) -> None:
        self._queue_events = queue_events
        self._subscribers: set[Subscription] = set()
        self.recent: deque[ModelEvent] = deque(maxlen=RECENT_EVENTS)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> Subscription:
        subscription = Subscription(self, self._queue_events)
        self._subscribers.add(subscription)
        return subscription

    def publish(self, event: ModelEvent) -> None:
        self.recent.append(event)
        for subscription in list(self._subscribers):
            if not subscription.offer(event):
                self._subscribers.discard(subscription)
                logger.warning("a model event subscriber fell %d events behind: dropped", self._queue_events)

    def remove(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)


class Subscription:
    """One subscriber's events, in order, as an async iterator; `aclose()` unsubscribes."""

    def __init__(self, hub: ModelEventHub, queue_events: int) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[ModelEvent] = asyncio.Queue(queue_events)
        self.dropped = False

    def offer(self, event: ModelEvent) -> bool:
        if self.dropped:
            return False
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped = True
            return False
        return True

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> ModelEvent:
        if self.dropped:  # it missed events: end it, so that its client reconnects and reads the models afresh
            raise SlowClientError()
        return await self._queue.get()

    async def aclose(self) -> None:
        self._hub.remove(self)
