"""Running paid requests: quote → certified spend → execution on a local
node → result, result summary and refund.

On the native path the user's signed order is certified first and the run starts after;
a run that fails, or uses fewer tokens than certified, gets a refund signed by the
executor, bounded by the certified amount. The OpenAI path (supernode.inference.openai)
answers at once from a key's certified reservation and settles afterwards: its runs set
each request's charge instead of a refund.

Recording a finished run (its row, charge or refund, summary) is recording.Recorder's."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from loguru import logger

from supernode.config import Settings
from supernode.credits import pack_rules
from supernode.credits.executor import Executor
from supernode.credits.orders import Order
from supernode.credits.voter import Voter
from supernode.crypto.canonical import canonical_json
from supernode.crypto.envelope import open_envelope
from supernode.crypto.keys import Identity
from supernode.errors import BadRequest, Conflict, NotFound, Refused
from supernode.federation.network import NetworkFile
from supernode.federation.signer import Signer
from supernode.inference import results
from supernode.inference.menu import Menu, ModelEntry
from supernode.inference.recording import Recorder
from supernode.inference.streams import RequestStream
from supernode.inference.usage import (
    USAGE_REQUEST,
    USAGE_RESPONSE,
    UsageRequestPayload,
    parse_params,
    request_id_for,
)
from supernode.ledger import inference as repo
from supernode.ledger import spends as spends_repo
from supernode.ledger.db import Ledger
from supernode.petals.client.pool import GenerateParams, NodePool, NodeUnavailable


class InferenceService:
    def __init__(
        self,
        *,
        identity: Identity,
        network: NetworkFile,
        settings: Settings,
        db: Ledger,
        pool: NodePool,
        voter: Voter,
        executor: Executor,
        publish: Any,
    ) -> None:
        self.identity = identity
        self.me = identity.address
        self.network = network
        self.s = settings
        self.db = db
        self.pool = pool
        self.voter = voter
        self.executor = executor
        self.publish = publish
        self.menu = Menu(settings)
        self.streams: dict[str, RequestStream] = {}
        self._seen_models: set[str] = set()
        self.signer = Signer(identity, network, settings.envelope_ttl_s)
        self._tasks: set[asyncio.Task[None]] = set()
        # whether the last reputation table marks an executor invalid (set by the node)
        self.is_invalid: Any = lambda address: False
        self.recorder = Recorder(
            db=db,
            signer=self.signer,
            publish=publish,
            menu=self.menu,
            count_tokens=self.count_tokens,
        )

    def start(self) -> None:
        self.recorder.start()

    async def stop(self) -> None:
        await self.recorder.wait_recorded()  # answered already: let their records land (bounded)
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.recorder.stop()

    # -- menu and tokens ---------------------------------------------------------------
    def model_menu(self) -> list[dict[str, Any]]:
        return [
            {
                **self.menu.entry(m).to_dict(),
                "nodes": len(urls),
                "token_counts": "local" if self.pool.local_tokenizer(m) else "node",
            }
            for m, urls in sorted(self.pool.models().items())
            if urls
        ]

    def entry(self, model: str) -> ModelEntry:
        """The menu entry of a model a healthy local node serves. A model no node serves
        is unknown (422); one whose nodes are all down now is unavailable (503)."""
        if self.pool.models().get(model):
            self._seen_models.add(model)
            return self.menu.entry(model)
        if model in self._seen_models or model in self.menu.priced:
            raise NodeUnavailable(
                f"no healthy node serves {model!r} right now; try later", reason="no_healthy_node"
            )
        raise Refused(
            f"model {model!r} is not on this supernode's menu; see /get_inference_model_menu",
            reason="unknown_model",
        )

    async def count_tokens(self, model: str, text: str) -> int:
        """The model's own count, asked of a node that serves it; a safe over-estimate
        (one token per 3 bytes) when none can tell."""
        count = await self.pool.tokenize(model, text)
        return count if count is not None else len(text.encode("utf-8")) // 3 + 1

    # -- quote ---------------------------------------------------------------------------
    async def quote(
        self,
        pack_id: str,
        requester: str,
        model: str,
        prompt: str,
        params_raw: Any,
        max_cost: int,
        usage_request_id: str,
        delegated: bool = False,
    ) -> dict[str, Any]:
        """Check a request against the pack, the menu and the node limits; store and
        return the quote (request_id, cost). Idempotent per usage request."""
        if isinstance(params_raw, dict) and params_raw.get("chat") is not None:
            raise BadRequest(
                "params.chat: a chat for a node's chat API (tools, response formats) comes "
                "through /v1/chat/completions"
            )
        row, known = await self.price(
            pack_id, requester, model, prompt, params_raw, max_cost, usage_request_id, delegated
        )
        if not known:
            async with self.db.write(repo.USAGE_QUOTES) as conn:
                repo.add_request(conn, row)
        return self._quote_view(row)

    async def price(
        self,
        pack_id: str,
        requester: str,
        model: str,
        prompt: str,
        params_raw: Any,
        max_cost: int,
        usage_request_id: str,
        delegated: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """The request's row as a quote stores it (not stored here), and whether it is
        stored already (the same usage request quoted before)."""
        request_id = request_id_for(usage_request_id)
        with self.db.read() as conn:
            known = repo.get_request(conn, request_id)
            pack = spends_repo.pack_state(conn, pack_id)
        if known is not None:
            return known, True
        pack = pack_rules.known_pack(pack, pack_id)
        if not delegated:  # a delegate's request: its delegation was checked by the caller
            pack_rules.signed_for(pack, requester)
        entry = self.entry(model)
        params = parse_params(params_raw, entry)
        prompt_tokens = await self.count_tokens(model, prompt)
        if prompt_tokens > entry.max_input_tokens:
            raise Refused(
                f"prompt is {prompt_tokens} tokens; {model} takes at most {entry.max_input_tokens}",
                reason="too_many_tokens",
            )
        cost = entry.cost(prompt_tokens, params.max_new_tokens)
        if cost > max_cost:
            raise Refused(f"costs {cost} credits, over max_cost {max_cost}", reason="over_max_cost")
        pack_rules.affordable(pack, cost)
        now = time.time()
        row = {
            "request_id": request_id,
            "usage_request_id": usage_request_id,
            "requester": requester,
            "pack_id": pack_id,
            "model": model,
            "prompt": prompt,
            "params": canonical_json(params_raw),
            "prompt_tokens": prompt_tokens,
            "cost": cost,
            "quote_expires_at": now + self.s.usage_quote_ttl_s,
            "status": repo.QUOTED,
            "refunded": 0,
            "created_at": now,
            "updated_at": now,
        }
        return row, False

    async def prune_quotes(self) -> int:
        """Forget usage quotes never confirmed, once no order signed while they held can
        still come (an envelope's longest lifetime after their expiry)."""
        async with self.db.write(repo.USAGE_QUOTES) as conn:
            n = repo.prune_quotes(conn, time.time() - self.s.max_envelope_ttl_s)
        if n:
            logger.info("forgot {} usage quotes never confirmed", n)
        return n

    def _quote_view(self, row: dict[str, Any]) -> dict[str, Any]:
        return {
            "request_id": row["request_id"],
            "usage_request_id": row["usage_request_id"],
            "pack_id": row["pack_id"],
            "model": row["model"],
            "prompt_tokens": row["prompt_tokens"],
            "cost": row["cost"],
            "quote_expires_at": int(row["quote_expires_at"]),
            "executor": self.me,
        }

    async def validate_usage(self, raw: Any) -> dict[str, Any]:
        """/validate_inference_api_usage_request: a signed usage response with the quote."""
        env, p = open_envelope(
            raw,
            USAGE_REQUEST,
            UsageRequestPayload,
            network_id=self.network.network_id,
            chain_id=self.network.chain_id,
            me=None,
            clock_skew_s=self.s.clock_skew_s,
            max_ttl_s=self.s.max_envelope_ttl_s,
        )
        q = await self.quote(p.pack_id, env.sender, p.model, p.input, p.params, p.max_cost, env.id)
        resp = self.signer.sign(
            USAGE_RESPONSE, q, recipient=env.sender, ttl_s=self.s.usage_quote_ttl_s
        )
        return resp.to_wire()

    # -- confirm and execute -------------------------------------------------------------
    def _request_for_order(self, order: Order) -> dict[str, Any]:
        with self.db.read() as conn:
            req = repo.get_request(conn, order.p.request_id)
        if req is None:
            raise NotFound(f"no quoted request {order.p.request_id} here: validate it first")
        if req["pack_id"] != order.pack_id:
            raise Refused("the order's pack is not the request's", reason="wrong_pack")
        if order.amount != req["cost"]:
            raise Refused(
                f"the order spends {order.amount}; the request costs {req['cost']}",
                reason="wrong_amount",
            )
        # an order signed while its quote held is honoured later (a retry through an outage)
        if req["status"] == repo.QUOTED and req["quote_expires_at"] < order.env.created_at:
            raise Refused("the quote expired; validate the request again", reason="quote_expired")
        return req

    async def process_confirmation(self, raw_order: Any) -> dict[str, Any]:
        """/process_inference_confirmation: certify the user's spend order, then run."""
        order = self.voter.parse(raw_order)
        if order.executor != self.me:
            raise Refused(
                f"the order names executor {order.executor}, not this supernode "
                f"({self.me}): confirm it there",
                reason="wrong_executor",
            )
        req = self._request_for_order(order)
        if req["status"] != repo.QUOTED:
            return self.status(req["request_id"])  # a retry: already certified
        cert = await self.executor.certify(order)
        await self.mark_certified(req["request_id"], order.sequence, order.id)
        self.start_run(req["request_id"])
        return {"request_id": req["request_id"], "status": repo.RUNNING, "certificate": cert}

    async def mark_certified(self, request_id: str, sequence: int, order_id: str) -> None:
        """The request's spend is certified: it may run."""
        async with self.db.write(repo.CERTIFIED_REQUESTS) as conn:
            repo.update_request(
                conn,
                request_id,
                status=repo.CERTIFIED,
                sequence=sequence,
                order_id=order_id,
                updated_at=time.time(),
            )

    def start_run(self, request_id: str) -> RequestStream:
        """Run a certified request; ``streams`` holds the runs in progress only (a finished
        run is replayed from the ledger), so it never holds more than what runs now."""
        stream = self.streams.get(request_id)
        if stream is None or stream.done:
            stream = self.streams[request_id] = RequestStream()
            task = asyncio.create_task(self._run(request_id, stream), name=f"run-{request_id[:10]}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            task.add_done_callback(lambda _t: self._forget(request_id, stream))
        return stream

    def sizes(self) -> dict[str, int]:
        """Entries of its in-memory maps (bounded: /metrics shows them)."""
        return {
            "inference_streams": len(self.streams),
            "inference_runs": len(self._tasks),
            **self.recorder.sizes(),
        }

    def _forget(self, request_id: str, stream: RequestStream) -> None:
        if self.streams.get(request_id) is stream:  # not a newer run of the same request
            del self.streams[request_id]

    async def _run(self, request_id: str, stream: RequestStream) -> None:
        with self.db.read() as conn:
            req = repo.get_request(conn, request_id)
        assert req is not None
        entry = self.menu.entry(req["model"])
        params: GenerateParams = parse_params(json.loads(req["params"]), entry)
        async with self.db.write(repo.REQUEST_PROGRESS) as conn:
            repo.update_request(conn, request_id, status=repo.RUNNING, updated_at=time.time())
        started = time.perf_counter()
        try:
            text, note = await self._generate(req, params, stream)
            out_tokens = await self.count_tokens(req["model"], text) if text else 0
            await self.recorder.finish(req, entry, text, out_tokens, time.perf_counter() - started)
            await stream.close(note)
        except asyncio.CancelledError:
            await stream.close("the daemon is stopping")
            raise
        except (NodeUnavailable, BadRequest, Refused) as exc:
            await self.recorder.fail(req, str(exc))
            await stream.close(str(exc))

    async def _generate(
        self, req: dict[str, Any], params: GenerateParams, stream: RequestStream
    ) -> tuple[str, str | None]:
        """Stream the run to followers. A node that dies after it sent chunks cannot be
        failed over mid-stream: the run is redone on another node (the pool fails over).
        Greedy output is the same there, so followers just get the rest; a sampled run
        that came out different is stored whole and followers are told to fetch it."""
        text = ""
        try:
            async for chunk in self.pool.stream(req["model"], req["prompt"], params):
                text += chunk
                await stream.push(chunk)
            return text, None
        except NodeUnavailable as exc:
            if exc.reason != "stream_broken":
                raise
            logger.warning(
                "request {}: {}; running it again on another node", req["request_id"], exc.detail
            )
        redo = await self.pool.generate(req["model"], req["prompt"], params)
        if redo.text.startswith(text):
            if redo.text[len(text) :]:
                await stream.push(redo.text[len(text) :])
            return redo.text, None
        return redo.text, "the run moved to another node mid-stream: fetch the result"

    def menu_params(self, model: str, params_raw: dict[str, Any]) -> GenerateParams:
        return parse_params(params_raw, self.menu.entry(model))

    def rerun(self, request_id: str) -> dict[str, Any]:
        """/execute_inference_request (operator): run a certified request again after a
        failed run; its refund, if any was applied, is not given twice."""
        with self.db.read() as conn:
            req = repo.get_request(conn, request_id)
        if req is None:
            raise NotFound(f"no request {request_id} here")
        if req["status"] not in (repo.FAILED, repo.CERTIFIED):
            raise Conflict(
                f"request is {req['status']}; only a certified request whose run "
                "failed can run again",
                reason="not_rerunnable",
            )
        if req["refunded"]:
            raise Conflict("its credits were refunded already", reason="refunded")
        self.start_run(request_id)
        return {"request_id": request_id, "status": repo.RUNNING}

    def status(self, request_id: str) -> dict[str, Any]:
        return self._flag(results.status(self.db, self.me, request_id))

    def result(self, request_id: str, caller: str, operator: bool) -> dict[str, Any]:
        return self._flag(
            {**results.result(self.db, request_id, caller, operator), "executor": self.me}
        )

    def _flag(self, answer: dict[str, Any]) -> dict[str, Any]:
        """Mark an answer whose executor the federation's reputation table holds invalid
        (it failed its audits several times in a row): its results are suspect."""
        invalid = self.is_invalid(answer.get("executor", ""))
        return {**answer, "executor_invalid": invalid}
