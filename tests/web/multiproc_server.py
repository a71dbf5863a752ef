"""One server process of the multi-process tests: a paced mock answer, sessions in Redis.

    python tests/web/multiproc_server.py --port P --redis URL --prefix X [--grace S] ...

Run as a separate process (several of them share one redis-server), so that
resume, stop and the stream cap are tested across real process boundaries.
"""

from __future__ import annotations

import argparse

import uvicorn

from pk_notebook.providers import MockProvider, Scenario
from pk_notebook.runtime import Pipeline, ProviderMiddleware
from pk_notebook.sessions import RedisStore
from pk_notebook.web import WebSettings, create_app
from pk_notebook.web.server import server_config


def answer(words: int) -> str:
    # One mock chunk per word: chunk i is "w{i}" (with its space), easy to check in order.
    return " ".join(f"w{i}" for i in range(words))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--grace", type=float, default=1.0)
    parser.add_argument("--max-concurrent", type=int, default=16)
    parser.add_argument("--max-events", type=int, default=10_000)
    parser.add_argument("--chunk-delay", type=float, default=0.01)
    parser.add_argument("--words", type=int, default=300)
    parser.add_argument("--token", default=None)
    parser.add_argument("--stream-lease", type=float, default=WebSettings().stream_lease)
    args = parser.parse_args()
    provider = MockProvider([Scenario(answer(args.words))], chunk_delay=args.chunk_delay)
    store = RedisStore.from_url(args.redis, prefix=args.prefix)
    pipe = Pipeline(ProviderMiddleware(provider), state_store=store)
    settings = WebSettings(
        token=args.token,
        resume_grace=args.grace,
        max_concurrent=args.max_concurrent,
        replay_max_events=args.max_events,
        heartbeat=None,
        stream_lease=args.stream_lease,
    )
    app = create_app(pipe, settings, close_pipeline=True)
    config = server_config(
        app, settings, host="127.0.0.1", port=args.port, log_level="warning", lifespan="on"
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
