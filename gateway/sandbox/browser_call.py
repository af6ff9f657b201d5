"""One call from the browser phone, as the fake Graph API sees it (like a simulated user's)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx

from . import payloads
from .actions import UserCallState, check_action
from .browser_sdp import answer_address, whatsapp_answer_to_browser
from .cloud import CloudAPISandbox
from .relay import MediaRelay

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BrowserUser:
    """The WhatsApp user the page stands for."""

    wa_id: str = "15550100100"
    name: str = "Browser caller"


class BrowserCall:
    """One call from the page: an entry in ``sandbox.calls`` like a simulated user's.

    ``publish`` sends the call's state changes to the open pages.
    """

    def __init__(
        self,
        sandbox: CloudAPISandbox,
        user: BrowserUser,
        call_id: str,
        *,
        publish: Callable[[dict[str, Any]], None],
        bot: str,
        browser_mid: str,
        relay: MediaRelay,
        offer_sdp: str,
        client: str,
    ) -> None:
        self.sandbox = sandbox
        self.call_id = call_id
        self.user = user
        self.publish = publish
        self.direction = "USER_INITIATED"
        self.bot = bot
        self.client = client
        self.browser_mid = browser_mid
        self.relay = relay
        # The offer the gateway got, in WhatsApp's form.
        self.offer_sdp = offer_sdp
        self.answer_sdp: str | None = None
        self.state = UserCallState.OFFERED
        self.accepted_at: float | None = None
        self.end_reason: str | None = None
        self.ended = asyncio.Event()
        # The browser's answer (None: the call ended first); the POST waits on it.
        self.answered: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- what the fake Graph API asks -----------------------------------------------------

    def check_action(self, action: str, body: dict[str, Any]) -> str | None:
        """Meta's checks on a business action for this call; a reason when refused."""
        return check_action(self.call_id, self.state, self.answer_sdp, action, body)

    def on_action(self, action: str, body: dict[str, Any]) -> None:
        """Apply an accepted business action: answer the page, or end the call."""
        if action in ("pre_accept", "accept") and self.answer_sdp is None:
            self.answer_sdp = str(body["session"]["sdp"])
            self.relay.gateway = self.relay.gateway or answer_address(self.answer_sdp)
            if not self.answered.done():
                self.answered.set_result(
                    whatsapp_answer_to_browser(
                        self.answer_sdp, self.browser_mid, self.relay.browser_side
                    )
                )
        if action == "pre_accept":
            self.publish_state(UserCallState.PRE_ACCEPTED)
        elif action == "accept":
            self.accepted_at = time.monotonic()
            self.publish_state(UserCallState.ACCEPTED)
        elif action in ("reject", "terminate"):
            # Meta confirms the end of the call with a terminate webhook.
            done = "rejected" if action == "reject" else "terminated"
            self._spawn(self._end(f"{done} by the business", notify=True))

    def publish_state(self, state: UserCallState | None = None, reason: str | None = None) -> None:
        """Move to ``state`` (default: stay) and tell the open pages."""
        self.state = state or self.state
        event: dict[str, Any] = {"type": "call", "call_id": self.call_id, "state": str(state)}
        if reason is not None:
            event["reason"] = reason
        self.publish(event)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name=f"phone:{self.call_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- what the person on the page does ---------------------------------------------------

    async def hang_up(self) -> None:
        """Hang up from the page: Meta posts a terminate webhook."""
        await self._end("user hung up", notify=True)

    async def close(self) -> None:
        """Tear down without telling anyone (sandbox shutdown), and stop our tasks."""
        await self._end("sandbox closed", notify=False)
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _end(self, reason: str, *, notify: bool) -> None:
        if self.state is UserCallState.ENDED:
            return
        self.end_reason = reason
        self.publish_state(UserCallState.ENDED, reason)
        self.sandbox.timeline.add(f"{self.user.name}'s call ends: {reason}")
        if not self.answered.done():
            self.answered.set_result(None)
        self.sandbox.calls.pop(self.call_id, None)
        self.relay.close()
        st = self.relay.stats
        dropped = f"; dropped {st.dropped} from {', '.join(sorted(st.dropped_from))}"
        self.sandbox.timeline.add(
            f"media edge forwarded {st.to_gateway} datagrams to the gateway and "
            f"{st.to_browser} to the browser{dropped if st.dropped else ''}"
        )
        if notify:
            try:
                await self.sandbox.deliver(
                    payloads.call_ended(
                        call_id=self.call_id,
                        user=self.user.wa_id,
                        business=self.sandbox.business_number,
                        phone_number_id=self.sandbox.phone_number_id,
                        direction=self.direction,
                        accepted_at=self.accepted_at,
                    )
                )
            except httpx.HTTPError as exc:  # the gateway may be gone already
                log.info("call %s: terminate webhook not delivered: %r", self.call_id, exc)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        self.ended.set()
