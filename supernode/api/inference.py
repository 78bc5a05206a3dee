"""Inference routes (the Pastel layer's names), token streaming over SSE and WebSocket."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from supernode.api.deps import ENVELOPE_BODY, Caller, get_node, operator_auth, prove, user_auth
from supernode.api.guard import read_json
from supernode.api.limits import check_rate, limited
from supernode.errors import BadRequest, Forbidden, NotFound, SupernodeError
from supernode.inference.streams import RequestStream
from supernode.ledger import inference as repo
from supernode.node import Supernode

router = APIRouter(tags=["inference"])
HEX32 = r"^0x[0-9a-fA-F]{64}$"
STREAM_ENDPOINT = "/stream_inference_output"


class RequestRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(pattern=HEX32)


@router.get("/get_inference_model_menu")
async def model_menu(node: Supernode = Depends(get_node)) -> dict[str, Any]:
    """Models served by a healthy local node, with prices (credits per input and output
    token) and limits."""
    return {"supernode": node.address, "models": node.inference.model_menu()}


@router.post(
    "/validate_inference_api_usage_request",
    dependencies=[Depends(limited("writes"))],
    openapi_extra=ENVELOPE_BODY,
)
async def validate_usage(request: Request, node: Supernode = Depends(get_node)) -> dict[str, Any]:
    """Body: the owner's signed `inference_usage_request` {pack_id, model, input, params,
    max_cost}. Returns this supernode's signed usage response: request_id and cost."""
    return await node.inference.validate_usage(await read_json(request))


@router.post("/process_inference_confirmation", openapi_extra=ENVELOPE_BODY)
async def process_confirmation(
    request: Request, node: Supernode = Depends(get_node)
) -> dict[str, Any]:
    """Body: the owner's signed `spend_order` for the quoted cost, naming this supernode as
    executor. The spend is certified by a quorum, then the request runs."""
    return await node.inference.process_confirmation(await read_json(request))


@router.post("/execute_inference_request")
async def execute_again(
    body: RequestRef,
    node: Supernode = Depends(get_node),
    _op: Caller = Depends(operator_auth("/execute_inference_request")),
) -> dict[str, Any]:
    """Operator only: run a certified request again whose run failed."""
    return node.inference.rerun(body.request_id.lower())


@router.post("/send_inference_output_results", openapi_extra=ENVELOPE_BODY)
async def receive_result_summary(
    request: Request, node: Supernode = Depends(get_node)
) -> dict[str, Any]:
    """A member sends its signed result summaries (an `inference_results` envelope) directly."""
    report = await node.intake.ingest([await read_json(request)], via=None)
    if report.rejected:
        first = report.rejected[0]
        raise BadRequest(f"refused: {first['detail']}", reason=first["reason"])
    return report.to_dict()


@router.get("/check_status_of_inference_request_results/{request_id}")
async def request_status(request_id: str, node: Supernode = Depends(get_node)) -> dict[str, Any]:
    """quoted → certified → running → completed / failed, with tokens, cost and refund."""
    return node.inference.status(_hex(request_id))


@router.post("/retrieve_inference_output_results")
async def retrieve_results(
    body: RequestRef,
    node: Supernode = Depends(get_node),
    caller: Caller = Depends(user_auth("/retrieve_inference_output_results")),
) -> dict[str, Any]:
    """The output, for the requester (challenge signed by the pack owner) or operator."""
    return node.inference.result(body.request_id.lower(), caller.address, caller.operator)


def _hex(value: str) -> str:
    if not re.match(HEX32, value):
        raise BadRequest("request_id must be 0x followed by 64 hex digits")
    return value.lower()


async def _stream_for(node: Supernode, request_id: str, address: str) -> Any:
    status = node.inference.status(request_id)
    with node.db.read() as conn:
        req = repo.get_request(conn, request_id)
    if req is None:
        raise NotFound(f"request {request_id} was not executed here")
    if req["requester"] != address and address != node.address:
        raise Forbidden("only the requester may follow the output")
    stream = node.inference.streams.get(request_id)
    if stream is None:
        # finished before this daemon started (or never started): replay what is stored
        stream = RequestStream()
        if status["status"] == "completed":
            await stream.push(req["result_text"] or "")
        await stream.close(None if status["status"] == "completed" else status["status"])
    return stream


@router.get(STREAM_ENDPOINT + "/{request_id}")
async def stream_sse(
    request_id: str,
    node: Supernode = Depends(get_node),
    caller: Caller = Depends(user_auth(STREAM_ENDPOINT)),
) -> StreamingResponse:
    """Server-sent events: `data: {"text": chunk}` per chunk, then `data: {"done": true}`
    (or `{"error": ...}`). Replays from the start for late joiners."""
    stream = await _stream_for(node, _hex(request_id), caller.address)
    idle = node.settings.node_stream_idle_timeout_s

    async def events() -> AsyncIterator[bytes]:
        try:
            async for chunk in stream.follow(idle):
                yield f"data: {json.dumps({'text': chunk})}\n\n".encode()
            end = {"done": True} if stream.error is None else {"error": stream.error}
        except TimeoutError:
            end = {"error": "no output for too long"}
        yield f"data: {json.dumps(end)}\n\n".encode()

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


@router.websocket("/ws/inference/{request_id}")
async def stream_ws(websocket: WebSocket, request_id: str) -> None:
    """WebSocket: auth by query (address, challenge_id, signature: a challenge for
    /stream_inference_output); then {"text": chunk} messages and {"done": true}."""
    node: Supernode = websocket.app.state.node
    q = websocket.query_params
    try:
        check_rate(websocket, "challenges")
        ch = await prove(
            node, STREAM_ENDPOINT, q.get("address"), q.get("challenge_id"), q.get("signature")
        )
        stream = await _stream_for(node, _hex(request_id), ch.address)
    except SupernodeError as exc:
        await websocket.close(code=1008, reason=str(exc)[:120])
        return
    await websocket.accept()
    try:
        async for chunk in stream.follow(node.settings.node_stream_idle_timeout_s):
            await websocket.send_json({"text": chunk})
        await websocket.send_json(
            {"done": True} if stream.error is None else {"error": stream.error}
        )
        await websocket.close()
    except (TimeoutError, RuntimeError):
        await websocket.close(code=1011)
