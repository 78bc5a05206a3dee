"""A fast OpenAI-compatible upstream for the gateway benchmark: it answers at once, so what
a benchmark measures through a supernode is the gateway's own cost, with no model in the
way.

Run:  .venv/bin/python scripts/fake_upstream.py --port 8100 [--model fake-model]

``GET /v1/models`` lists ``--model``; ``POST /v1/completions`` (JSON ``{model, prompt,
max_tokens, stream?}``) answers ``max_tokens`` words taken from the prompt, the same for
the same prompt (so a benchmark can check that the gateway passes the text through
unchanged), with ``usage``; with ``"stream": true`` one server-sent event per word, then
``data: [DONE]``. ``--delay-ms`` waits that long per word (0: none). It listens on
127.0.0.1 only and stops on SIGTERM or SIGINT.

``POST /v1/chat/completions`` (whole or streamed, with ``stream_options.include_usage``)
stands in for a server with tool calling: offered ``tools`` (and ``tool_choice`` not
``none``) and the last message not a tool's result, it calls the tool ``tool_choice``
names, else the first, with the arguments ``{"query": <the last message's text>,
"tools_offered": <how many>}`` (finish_reason
``tool_calls``); after a tool's result it answers ``the tool said: <result>``; with a
``response_format`` of ``json_object`` or ``json_schema`` the content is ``{"answer":
<words>}``. With ``--no-tools`` it refuses tools and response formats with a 400, as a
server without them does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

from aiohttp import web


def words_for(prompt: str, n: int) -> list[str]:
    src = prompt.split() or ["ok"]
    return [" " + src[i % len(src)] for i in range(n)]


def chat_answer(body: dict, tools_ok: bool) -> tuple[int, dict]:
    """(status, body) of the stand-in chat API."""
    messages = body.get("messages") or [{}]
    tools = body.get("tools") or []
    choice = body.get("tool_choice", "auto")
    rf = (body.get("response_format") or {}).get("type", "text")
    if not tools_ok and (tools or rf != "text"):
        error = {"message": "tools and response formats are not supported by this server"}
        return 400, {"error": {**error, "type": "invalid_request_error", "code": None}}
    last = messages[-1]
    text = last.get("content") if isinstance(last.get("content"), str) else ""
    n = int(body.get("max_tokens") or 16)
    message: dict = {"role": "assistant", "content": None}
    finish = "stop"
    if tools and choice != "none" and last.get("role") != "tool":
        name = (
            choice["function"]["name"] if isinstance(choice, dict) else tools[0]["function"]["name"]
        )
        arguments = json.dumps({"query": text, "tools_offered": len(tools)})
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        message["tool_calls"] = [call]
        finish, used = "tool_calls", 8
    elif last.get("role") == "tool":
        message["content"], used = f"the tool said: {text}", 4
    else:
        words = words_for(text, n)
        used = len(words)
        content = "".join(words)
        message["content"] = json.dumps({"answer": content}) if rf != "text" else content
    prompt_tokens = len(json.dumps(messages).split())
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": min(used, n),
        "total_tokens": prompt_tokens + min(used, n),
    }
    choice_out = {"index": 0, "message": message, "finish_reason": finish}
    return 200, {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "choices": [choice_out],
        "usage": usage,
    }


def chat_deltas(choice: dict) -> list[tuple[dict, str | None]]:
    """A whole chat answer as a stream's (delta, finish_reason) events: the role; the content
    a word at a time; each tool call's id and name, then its arguments in pieces of 8
    characters; the finish."""
    message = choice["message"]
    out: list[tuple[dict, str | None]] = [({"role": "assistant", "content": ""}, None)]
    content = message.get("content")
    if content:
        pieces = [" " + w for w in content.split(" ") if w] if content.startswith(" ") else None
        for piece in pieces or [content[i : i + 8] for i in range(0, len(content), 8)]:
            out.append(({"content": piece}, None))
    for i, call in enumerate(message.get("tool_calls") or []):
        fn = call["function"]
        named = {"name": fn["name"], "arguments": ""}
        first = {"index": i, "id": call["id"], "type": "function", "function": named}
        out.append(({"tool_calls": [first]}, None))
        args = fn["arguments"]
        for j in range(0, len(args), 8):
            piece = {"index": i, "function": {"arguments": args[j : j + 8]}}
            out.append(({"tool_calls": [piece]}, None))
    out.append(({}, choice["finish_reason"]))
    return out


def make_app(model: str, delay_s: float, tools_ok: bool = True) -> web.Application:
    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": model, "object": "model"}]})

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        n = int(body.get("max_tokens") or 16)
        words = words_for(str(body.get("prompt", "")), n)
        usage = {
            "prompt_tokens": len(str(body.get("prompt", "")).split()),
            "completion_tokens": n,
            "total_tokens": len(str(body.get("prompt", "")).split()) + n,
        }
        if not body.get("stream"):
            if delay_s:
                await asyncio.sleep(delay_s * n)
            return web.json_response(
                {
                    "id": "cmpl-fake",
                    "object": "text_completion",
                    "model": model,
                    "choices": [{"index": 0, "text": "".join(words), "finish_reason": "length"}],
                    "usage": usage,
                }
            )
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for w in words:
            if delay_s:
                await asyncio.sleep(delay_s)
            event = {"object": "text_completion", "choices": [{"index": 0, "text": w}]}
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def chat(request: web.Request) -> web.StreamResponse:
        asked = await request.json()
        status, body = chat_answer(asked, tools_ok)
        if status != 200 or not asked.get("stream"):
            return web.json_response({**body, "model": model}, status=status)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        head = {"id": body["id"], "object": "chat.completion.chunk", "model": model}
        include_usage = (asked.get("stream_options") or {}).get("include_usage")
        for delta, finish in chat_deltas(body["choices"][0]):
            if delta and delay_s:
                await asyncio.sleep(delay_s)
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            event = {**head, "choices": [choice]}
            if include_usage:
                event["usage"] = None
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        if include_usage:
            event = {**head, "choices": [], "usage": body["usage"]}
            await resp.write(f"data: {json.dumps(event)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def serve(port: int, model: str, delay_s: float, tools_ok: bool = True) -> None:
    runner = web.AppRunner(make_app(model, delay_s, tools_ok), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"fake upstream on http://127.0.0.1:{port} serving {model}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--model", default="fake-model")
    p.add_argument("--delay-ms", type=float, default=0.0)
    p.add_argument("--no-tools", action="store_true", help="refuse tools and response formats")
    a = p.parse_args()
    asyncio.run(serve(a.port, a.model, a.delay_ms / 1000, tools_ok=not a.no_tools))


if __name__ == "__main__":
    main()
