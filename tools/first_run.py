"""A newcomer's first question, asked many times: how often the README's quick-start request
(no temperature, no max_tokens: the sampling defaults in force) names Paris, how long the
answers are, and how long each takes. Run against a daemon already serving the test models
(`target/release/opta-lmx serve --models-dir .deps/models`):

    .deps/venv/bin/python tools/first_run.py [--model ID] [--runs N] [--port P]

Seeds 0..N-1 make the runs repeatable; max_tokens 200 only bounds a runaway answer (a run that
reaches it is counted)."""

import argparse
import time

from openai import OpenAI


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="opta/SmolLM2-135M-Instruct-f32")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--port", type=int, default=1234)
    args = ap.parse_args()

    client = OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key="unused")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    paris = capped = tokens = 0
    began = time.perf_counter()
    for seed in range(args.runs):
        r = client.chat.completions.create(model=args.model, messages=question, seed=seed, max_tokens=200)
        text = r.choices[0].message.content or ""
        paris += "Paris" in text
        capped += r.choices[0].finish_reason == "length"
        tokens += r.usage.completion_tokens
        print(f"seed {seed}: {text!r}")
    each = (time.perf_counter() - began) / args.runs
    print(
        f"{args.model}: {paris}/{args.runs} answers name Paris, {capped}/{args.runs} reach 200 tokens, "
        f"{tokens / args.runs:.0f} tokens and {each:.2f} s per answer"
    )


if __name__ == "__main__":
    main()
