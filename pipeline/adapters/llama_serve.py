"""The embedded LLM server process: llama.cpp's own HTTP server (through `xllamacpp`) with parallel slots.

Run as `python -m pipeline.adapters.llama_serve --model M.gguf --port P ...` by `EmbeddedLLMServer`,
which owns the process (it dies with its parent). llama.cpp decodes the sequences of all busy slots
in one batch (continuous batching), so N requests in flight cost little more than one on a CPU.
The API key, if any, comes in the environment variable `OPENS2S_LLM_SERVER_KEY` (not on the
command line, where `ps` would show it).
"""

from __future__ import annotations

import argparse
import os
import signal

API_KEY_ENV = "OPENS2S_LLM_SERVER_KEY"


def main(argv: list[str] | None = None) -> None:
    """Start llama.cpp's server in this process and serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="GGUF file")
    parser.add_argument("--alias", default="", help="model name the server reports")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="threads for decoding and prompt processing")
    parser.add_argument("--slots", type=int, default=1, help="sequences decoded at once (n_parallel)")
    parser.add_argument("--ctx-per-slot", type=int, default=2048, help="context tokens of each slot")
    args = parser.parse_args(argv)

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    if args.alias:
        params.model_alias = {args.alias}
    params.hostnames = [args.host]
    params.port = args.port
    params.n_parallel = args.slots
    params.n_ctx = args.ctx_per_slot * args.slots  # llama.cpp splits n_ctx evenly over the slots
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.cont_batching = True
    key = os.environ.get(API_KEY_ENV)
    if key:
        params.api_keys = [key]
    # The server object owns llama.cpp's HTTP and decoding threads; keep it referenced until a signal ends us.
    server = xllamacpp.Server(params)
    print(f"listening on {server.listening_address}", flush=True)
    # Exit at once on SIGTERM (also the parent-death signal): waiting for in-flight requests to finish
    # could outlive a killed build; the OS frees the model and the KV cache.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    while server is not None:
        signal.pause()


if __name__ == "__main__":
    main()
