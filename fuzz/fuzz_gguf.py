"""Coverage-guided fuzzing of the GGUF front door (atheris): parse, read hyper-parameters, map weights, read
companion-style metadata. Any exception other than GGUFError is a bug, and so is a hang or a crash.

    python fuzz/fuzz_gguf.py -max_total_time=600          # 10 minutes
    python fuzz/fuzz_gguf.py -atheris_runs=20000           # a short run, as CI does

Seeds are valid tiny models built in memory (tests/gguf_craft.py), so the fuzzer starts from deep inside the format.
"""
from __future__ import annotations

import os
import sys
import tempfile

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

with atheris.instrument_imports():
    from rsparse_cpp.config import Config
    from rsparse_cpp.gguf_file import GGUFError, GGUFFile
    from rsparse_cpp.weights import Weights


def one_input(data: bytes) -> None:
    try:
        f = GGUFFile("<fuzz>", data=data)
        cfg = Config.from_gguf(f)
        w = Weights.from_gguf(f, cfg)
        for layer in w.layers:  # touch every mapped view: reads must stay inside the buffer
            _ = layer.attn_q.data[-1:].tobytes()
    except GGUFError:
        pass


def seed_corpus() -> str:
    from gguf_craft import STR, tiny_model

    d = tempfile.mkdtemp(prefix="gguf-fuzz-seeds-")
    seeds = {"tiny": tiny_model(), "tied_gqa": tiny_model(override={"general.name": (STR, "x")})}
    for name, craft in seeds.items():
        with open(os.path.join(d, name), "wb") as fh:
            fh.write(craft.build())
    return d


def main() -> None:
    argv = list(sys.argv)
    if not any(a.startswith("-artifact_prefix") for a in argv):  # crash files go to /tmp, never into the repo
        argv.insert(1, f"-artifact_prefix={tempfile.gettempdir()}/gguf-fuzz-")
    if not any(not a.startswith("-") for a in argv[1:]):
        corpus = os.environ.get("RSPARSE_FUZZ_CORPUS") or seed_corpus()
        argv.append(corpus)
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
