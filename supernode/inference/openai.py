"""The OpenAI-compatible path.

The API key is a delegation the pack's owner signed: "supernode S may spend up to M
credits of pack P until T" (`spend_delegation`, base64url JSON behind an `sn-` prefix).
When the owner made the key, M credits were reserved for it in P's sequence: a pack of
their own (``reservation_id(P, key)``), whose buyer is S. S alone spends from that pack,
so it answers at once, with no quorum round in front: it quotes the request against what
the reservation holds less what it answered and has not settled yet, writes the request
durably, and runs it; its requests are certified afterwards, many in one settlement
(settlement.Settler). When the key expires or is revoked, S settles what it answered and
gives the rest back to P (a close order: ``close_reservations``)."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from supernode.credits import pack_rules
from supernode.credits.orders import DelegationPayload, Order, parse_delegation, reservation_id
from supernode.crypto.canonical import canonical_json
from supernode.crypto.envelope import Envelope, check_window, payload_of
from supernode.errors import EnvelopeError, Refused, SupernodeError, Unauthorized
from supernode.inference.key_limits import Admission, KeyLimiter, KeyLimits
from supernode.inference.menu import ModelEntry
from supernode.inference.openai_chat import passed_param
from supernode.inference.openai_fields import OpenAIError, unsupported
from supernode.inference.openai_params import DEFAULT_MAX_TOKENS, OpenAIRequest
from supernode.inference.recording import openai_usage
from supernode.inference.service import InferenceService
from supernode.inference.settlement import Settler
from supernode.ledger import inference as repo
from supernode.ledger import settlements as settle_repo
from supernode.ledger import spends as spends_repo
from supernode.locks import KeyedLock
from supernode.petals.client.openai import StreamedMessage
from supernode.petals.client.pool import GenerateParams

KEY_PREFIX = "sn-"


def encode_api_key(delegation: dict[str, Any]) -> str:
    return KEY_PREFIX + base64.urlsafe_b64encode(canonical_json(delegation)).decode().rstrip("=")


def decode_api_key(key: str) -> Any:
    if not key.startswith(KEY_PREFIX):
        raise Unauthorized("the API key is not a supernode delegation (sn-...)")
    body = key[len(KEY_PREFIX) :]
    try:
        return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except ValueError as exc:
        raise Unauthorized("the API key does not decode") from exc


@dataclass
class Job:
    request_id: str
    model: str
    prompt: str
    params: GenerateParams
    created: int
    pack_id: str
    cost: int
    prompt_tokens: int
    req: OpenAIRequest
    # ms from the start of the run to each step, for the Server-Timing header
    timing: dict[str, float] = field(default_factory=dict)
    completion_tokens: int | None = None  # a stream's, once it ended

    def finish_reason(self, completion_tokens: int, calls_tools: bool = False) -> str:
        """``tool_calls`` when the answer calls tools; ``length`` when the tokens ran out,
        else ``stop`` (end of text or a stop sequence: the cut text is shorter than the
        limit)."""
        if calls_tools:
            return "tool_calls"
        return "length" if completion_tokens >= self.params.max_new_tokens else "stop"

    def message(self, text: str) -> dict[str, Any]:
        """The chat answer's message: the node's content and tool calls when the chat went
        to the node's chat API (``text`` is their JSON), else ``text`` as the content."""
        out: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if self.params.chat:
            answer = json.loads(text)
            out["content"] = answer["content"]
            if answer["tool_calls"]:
                out["tool_calls"] = answer["tool_calls"]
        return out


MAX_KEY_TERMS = 10_000  # keys whose parsed limits are kept (least recently used dropped)
MAX_KEYS_VERIFIED = 4_096  # API keys whose signature is known good (least recently used dropped)


@dataclass(frozen=True)
class KeyTerms:
    """What a key allows besides its cap: rate limits, and the models (None: all)."""

    limits: KeyLimits
    models: frozenset[str] | None


class OpenAIGateway:
    def __init__(self, service: InferenceService) -> None:
        self.svc = service
        self._pack_locks = KeyedLock()  # one order at a time per reservation pack
        self.limiter = KeyLimiter()
        self._terms: OrderedDict[str, KeyTerms] = OrderedDict()
        self._verified: OrderedDict[str, Envelope] = OrderedDict()  # API key -> delegation
        self.settler = Settler(service, self._pack_locks, self._order)

    def sizes(self) -> dict[str, int]:
        """Entries of its in-memory maps (bounded: /metrics shows them)."""
        return {
            "openai_pack_locks": len(self._pack_locks),
            "openai_key_windows": len(self.limiter),
            "openai_key_terms": len(self._terms),
            "openai_keys_verified": len(self._verified),
            **self.settler.sizes(),
        }

    def terms(self, d: Envelope) -> KeyTerms:
        """The key's limits and models, read once per key."""
        t = self._terms.pop(d.id, None)
        if t is None:
            p = payload_of(d, DelegationPayload)
            t = KeyTerms(
                KeyLimits(p.rpm, p.tpm, p.max_in_flight),
                frozenset(p.models) if p.models is not None else None,
            )
        self._terms[d.id] = t
        while len(self._terms) > MAX_KEY_TERMS:
            self._terms.popitem(last=False)
        return t

    def allows(self, d: Envelope, model: str) -> bool:
        models = self.terms(d).models
        return models is None or model in models

    async def admit(
        self, d: Envelope, req: OpenAIRequest
    ) -> tuple[Admission | None, dict[str, str]]:
        """The key's model list and rate limits, before anything is quoted: 403
        ``model_not_allowed``, 429 with Retry-After (nothing is spent or stored). Returns
        the admission to settle and release when the request ends, and the headers."""
        t = self.terms(d)
        if t.models is not None and req.model not in t.models:
            raise OpenAIError(
                403,
                f"this key may not use the model `{req.model}` (it allows "
                f"{', '.join(sorted(t.models))})",
                code="model_not_allowed",
                param="model",
            )
        if not t.limits.any:
            return None, {}
        tokens = 0
        if t.limits.tpm is not None:  # prompt + max_tokens, as OpenAI counts a request
            entry = self.model_entry(req.model)
            max_new = req.max_tokens or min(DEFAULT_MAX_TOKENS, entry.max_new_tokens)
            tokens = await self.svc.count_tokens(req.model, req.prompt) + max_new
        return self.limiter.admit(d.id, t.limits, tokens)

    def delegation(self, authorization: str | None) -> Envelope:
        if not authorization or not authorization.startswith("Bearer "):
            raise Unauthorized("send the delegation as `Authorization: Bearer sn-...`")
        key = authorization[7:].strip()
        d = self._verified.pop(key, None)
        try:
            if d is None:
                d = parse_delegation(
                    decode_api_key(key),
                    self.svc.network,
                    clock_skew_s=self.svc.s.clock_skew_s,
                    max_ttl_s=self.svc.s.max_envelope_ttl_s,
                )
            else:  # its signature was checked when it was first used: only its time now
                try:
                    check_window(d, self.svc.s.clock_skew_s)
                except EnvelopeError as exc:
                    if exc.reason != "expired":
                        raise
                    raise EnvelopeError("delegation_expired", exc.detail) from None
        except Unauthorized:
            raise
        except SupernodeError as exc:  # a bad key is an authentication failure
            raise Unauthorized(f"API key refused: {exc.detail}", reason=exc.reason) from exc
        if d.payload["delegate"] != self.svc.me:
            raise Unauthorized(
                f"this key delegates to {d.payload['delegate']}, not to this "
                f"supernode ({self.svc.me})"
            )
        self._verified[key] = d
        while len(self._verified) > MAX_KEYS_VERIFIED:
            self._verified.popitem(last=False)
        with self.svc.db.read() as conn:
            if spends_repo.revoked_at(conn, d.id) is not None:
                raise Unauthorized("this API key was revoked by its owner", reason="key_revoked")
        return d

    def model_entry(self, model: str) -> ModelEntry:
        """The menu entry; 404 ``model_not_found`` as OpenAI answers it for a model not
        on the menu (a known model whose nodes are down stays a 503)."""
        try:
            return self.svc.entry(model)
        except Refused as exc:
            if exc.reason != "unknown_model":
                raise
            raise OpenAIError(
                404,
                f"The model `{model}` does not exist or you do not have access to it.",
                code="model_not_found",
                param="model",
            ) from None

    async def prepare(self, d: Envelope, req: OpenAIRequest) -> Job:
        """Quote the request against the key's reservation, count it as answered there
        (settlement.Settler.admit) and write it durably: from here it may be answered."""
        entry = self.model_entry(req.model)
        if req.max_tokens is not None and req.max_tokens > entry.max_new_tokens:
            raise context_exceeded(
                entry,
                "max_tokens",
                f"you requested {req.max_tokens} completion tokens; this model makes at most "
                f"{entry.max_new_tokens}",
            )
        if req.passthrough is not None and not self.svc.pool.takes_chat(req.model):
            raise unsupported(
                passed_param(req.passthrough),
                f"no node serving {req.model} here takes tools, tool messages or response "
                "formats (an OpenAI-compatible node does)",
            )
        if req.logprobs is not None:
            if req.stream:
                raise unsupported("logprobs", "logprobs are given with whole answers, not streams")
            if not self.svc.pool.can_score(req.model):
                raise unsupported("logprobs", f"no node serving {req.model} gives logprobs")
        max_new = req.max_tokens or min(DEFAULT_MAX_TOKENS, entry.max_new_tokens)
        params_raw = req.native_params(max_new)
        # the key spends from its reservation: a pack of its own, whose buyer is us
        pack_id = reservation_id(d.payload["pack_id"], d.id)
        with self.svc.db.read() as conn:
            pack = spends_repo.pack_state(conn, pack_id)
        if pack is None:
            raise OpenAIError(
                403,
                "this key's credits are not reserved here (yet): the owner's `keys create` "
                "reserves them when it makes the key",
                code="key_not_funded",
            )
        pack_rules.signed_for(pack, self.svc.me)
        pack_rules.usable_reservation(pack, time.time(), revoked_at=None)
        try:
            row, _ = await self.svc.price(
                pack_id,
                d.sender,
                req.model,
                req.prompt,
                params_raw,
                max(1, pack["remaining_credits"]),
                "0x" + secrets.token_hex(32),
                delegated=True,
            )
        except Refused as exc:
            if exc.reason == "too_many_tokens":
                raise context_exceeded(entry, req.prompt_param, exc.detail) from None
            raise
        await self.settler.admit(pack_id, row["cost"])
        await self._write_answered(row)
        return Job(
            row["request_id"],
            req.model,
            req.prompt,
            self.svc.menu_params(req.model, params_raw),
            int(time.time()),
            pack_id,
            row["cost"],
            row["prompt_tokens"],
            req,
        )

    async def _write_answered(self, row: dict[str, Any]) -> None:
        """Write the request durably before any of its answer goes out (shared with the
        request rows queued meanwhile). If the caller leaves while it is queued, the row
        may still land: it is then recorded as not answered (charged nothing)."""
        record = {**row, "status": repo.RUNNING, "settle_state": settle_repo.OPEN}
        write = asyncio.ensure_future(
            self.svc.recorder.write_rows(
                (settle_repo.ANSWERED,), lambda conn: repo.add_request(conn, record)
            )
        )
        try:
            await asyncio.shield(write)
        except asyncio.CancelledError:
            self.svc.recorder.track_recording(asyncio.create_task(self._unanswered(write, row)))
            raise
        except BaseException:
            self.settler.release(row["pack_id"], row["cost"])
            raise

    async def _unanswered(self, write: asyncio.Future[None], row: dict[str, Any]) -> None:
        """The caller of a queued write left: once the write ends, the request is failed
        (charge 0) if its row landed, and its credits are given back if it did not."""
        try:
            await write
        except BaseException:
            self.settler.release(row["pack_id"], row["cost"])
            raise
        await self.svc.recorder.fail_request(row["request_id"], "the request was cancelled")

    def _order(self, pack_id: str, amount: int, request_id: str, **extra: Any) -> Order:
        """Our signed order on a reservation's pack at its next sequence (the caller holds
        that pack's lock: we are its only spender), parsed as a voter parses it."""
        with self.svc.db.read() as conn:
            pack = spends_repo.pack_state(conn, pack_id)
        assert pack is not None
        payload = {
            "pack_id": pack_id,
            "sequence": pack["next_sequence"],
            "amount": amount,
            "request_id": request_id,
            "executor": self.svc.me,
            **extra,
        }
        signed = self.svc.signer.sign("spend_order", payload, ttl_s=self.svc.s.usage_quote_ttl_s)
        return self.svc.voter.parse(signed.to_wire())

    async def close_reservations(self) -> int:
        """Give back what is left of the reservations of keys that expired or were
        revoked, once every request answered from them is settled (a close order on
        each, certified like a spend; the next round tries again one that failed).
        Returns how many were closed."""
        with self.svc.db.read() as conn:
            due = spends_repo.reservations_to_close(conn, self.svc.me, time.time())
        closed = 0
        for pack_id in due:
            try:
                await self.settler.settle(pack_id)
            except SupernodeError as exc:
                logger.warning("reservation {}: not settled yet: {}", pack_id, exc)
            async with self._pack_locks.hold(pack_id):  # after the requests in flight
                if self.settler.unsettled(pack_id):
                    continue  # requests still running or to settle: next round
                with self.svc.db.read() as conn:
                    pack = spends_repo.pack_state(conn, pack_id)
                if pack is None or pack["remaining_credits"] <= 0:
                    continue
                order = self._order(
                    pack_id, pack["remaining_credits"], "0x" + secrets.token_hex(32), close=True
                )
                try:
                    await self.svc.executor.certify(order)
                except SupernodeError as exc:
                    logger.warning("reservation {}: not closed yet: {}", pack_id, exc)
                    continue
                closed += 1
                logger.info(
                    "reservation {}: {} credits back to pack {}",
                    pack_id,
                    pack["remaining_credits"],
                    pack["parent_pack_id"],
                )
        return closed

    async def complete(self, d: Envelope, job: Job) -> tuple[str, dict[str, int]]:
        """Run the request and answer; its result and charge are recorded right after
        (the daemon's stop waits for them). Returns (text, usage)."""
        started = time.perf_counter()
        try:
            result = await self.svc.pool.generate(job.model, job.prompt, job.params)
        except SupernodeError as exc:
            await self.svc.recorder.fail_request(job.request_id, str(exc))
            raise
        except BaseException:  # the caller left: nothing was answered
            self._abandon(job, "the request was cancelled")
            raise
        job.timing["generate"] = (time.perf_counter() - started) * 1000
        if result.output_tokens is None:  # the node did not count: ask its tokenizer first
            usage = await self.svc.recorder.complete_request(
                job.request_id, result.text, result.latency_s, result.output_tokens
            )
            return result.text, usage
        out = min(result.output_tokens, job.params.max_new_tokens)
        self.svc.recorder.record_later(job.request_id, result.text, result.latency_s, out)
        return result.text, openai_usage(job.prompt_tokens, out)

    def _abandon(self, job: Job, error: str) -> None:
        """Record in the background that ``job`` was not answered (it costs nothing)."""
        task = asyncio.create_task(self.svc.recorder.fail_request(job.request_id, error))
        self.svc.recorder.track_recording(task)

    async def logprobs(self, job: Job, text: str) -> list[dict[str, Any]] | None:
        """The answer's tokens with their log-probabilities and ``job.req.logprobs``
        alternatives each, from a node that scores the text in one forward pass (after the
        answer: the text is paid for and kept whatever happens here). None, logged, when no
        node could give them."""
        assert job.req.logprobs is not None
        try:
            body = await self.svc.pool.score(
                job.model,
                job.prompt,
                text,
                logprobs=job.req.logprobs,
                repetition_penalty=job.params.repetition_penalty,
            )
        except SupernodeError as exc:
            logger.warning("request {}: no logprobs: {}", job.request_id, exc)
            return None
        if body is None:
            logger.warning("request {}: no logprobs: no node scores now", job.request_id)
            return None
        return list(body["logprobs"])

    async def stream(self, d: Envelope, job: Job) -> AsyncIterator[str | dict[str, Any]]:
        """Chunks as the model makes them: text, or for a chat that went to the node's chat
        API each delta (``content``, ``tool_calls``) as the node sent it. A client that
        leaves is charged for what it was sent; a run that fails costs nothing."""
        text = ""
        message = StreamedMessage() if job.params.chat else None
        started = time.perf_counter()
        finished = False
        try:
            async for chunk in self.svc.pool.stream(job.model, job.prompt, job.params):
                if isinstance(chunk, str):
                    text += chunk
                    yield chunk
                elif message is not None and (delta := message.add(chunk)):
                    yield delta
            finished = True
        except SupernodeError as exc:
            finished = True
            await self.svc.recorder.fail_request(job.request_id, str(exc))
            raise
        finally:
            if not finished:  # the client left (the generator was closed or cancelled)
                sent = text if message is None or message.empty else message.text()
                self.svc.recorder.record_later(
                    job.request_id, sent, time.perf_counter() - started, None
                )
        if message is not None and not message.empty:
            text = message.text()
        if not text and (message is not None or not job.params.stop):  # (a stop may cut all)
            await self.svc.recorder.fail_request(job.request_id, "empty output")
            raise Refused("empty output", reason="empty_output")
        # every chunk is out; the count gives the finish reason and the usage chunk, and
        # the result is recorded right after
        given = message.completion_tokens if message is not None else None
        if given is None:
            given = await self.svc.count_tokens(job.model, text)
        counted = min(given, job.params.max_new_tokens)
        job.completion_tokens = counted
        self.svc.recorder.record_later(job.request_id, text, time.perf_counter() - started, counted)


def context_exceeded(entry: ModelEntry, param: str, detail: str) -> OpenAIError:
    """OpenAI's 400 for a request that does not fit the model (clients and LiteLLM read
    ``context_length_exceeded`` and this message's first words)."""
    window = entry.max_input_tokens + entry.max_new_tokens
    return OpenAIError(
        400,
        f"This model's maximum context length is {window} tokens "
        f"({entry.max_input_tokens} for the prompt, {entry.max_new_tokens} for the completion); "
        f"{detail}.",
        code="context_length_exceeded",
        param=param,
    )
