#!/usr/bin/env bash
# The GPU figures that the open issues ask for, in one run on a lent device (the device
# tool runs one command on a copy of this checkout; ../shared does not travel, and the
# machine lacks soundfile, soxr and the server's packages):
#
#   bash benchmarks/gpu_session.sh prepare    # here, once: .gpu/ (wheels, ../shared's audio and configs)
#   bash benchmarks/gpu_session.sh run        # there: the device tool's run, carry [".gpu"]
#
# `run` writes one report per benchmark under $OUT (at most 8 files come back: the default
# steps write 7):
#   throughput.md  encoding over a corpus mix per precision and batching, memory per call,
#                  code agreement, quality; the reference beside it (benchmarks/throughput.py)
#   workspace.md   (STEPS="workspace") float32 again with cuDNN's workspace capped
#                  (CUDNN_CONV_WSCAP_DBG); on 2026-11-28 it did not change the 74 GB peak
#   profile.md     encode and decode time per part against the card's rates (profile_parts.py)
#   tests.md       the CUDA graph tests (tests/test_graphed_steps.py; the CPU skips the capture)
#   streams.md     batched 1-frame and 5-frame decoder steps, 1 to 1024 streams, eager and as
#                  CUDA graphs, taking turns, each step's frames in one push_batch (streaming.py;
#                  the 2026-11-28 H200 figures pushed stream by stream, 17 µs a stream)
#   products.md    (STEPS="products") 1-frame steps of 256 to 1024 streams with their convs as matrix products up to
#                  2^28 unfolded elements (1 GiB) rather than 2^25: whether cuDNN is what makes
#                  1024 streams 3.4x as slow as 512
#   overhead.md    (STEPS="overhead") the streaming engine's host time per stream, its layers left out
#   corpus.md      `higgs-tokenizer tokenize-dataset`, end to end and once its first shard is in,
#                  against the model alone on the same clips (384 clips of 1-20 s in shards of
#                  128; the model's first pass and its second)
#   serve.md       the server's streams at real-time pace with an encoding client
#   memory.md      the largest encode call's allocations, cuDNN settings against its memory and
#                  codes, the mix's GPU codes against the CPU's (gpu_memory.py)
# Each step has its own time limit (550 s in all for the default steps, and the model's
# making: about 20 s), so
# that one slow step cannot cost the others; STEPS="streams serve" runs only those. To try
# the flow without a GPU: DEVICE=cpu QUICK=1 PYTHON=.venv/bin/python bash benchmarks/gpu_session.sh run
set -uo pipefail
cd "$(dirname "$0")/.."

case "${1:-}" in
prepare)
    shared=${HIGGS_SHARED_DIR:-../shared}
    grep -qx '/.gpu/' .git/info/exclude || echo '/.gpu/' >> .git/info/exclude
    rm -rf .gpu && mkdir -p .gpu/whl .gpu/shared
    mkdir -p .gpu/shared/fixtures && cp -r "$shared/fixtures/tiny-24k" .gpu/shared/fixtures/ || exit 1
    cp -r "$shared/audio" "$shared/reference" .gpu/shared/ || exit 1
    # The device's Python is 3.12; the names are what its image lacks (soundfile needs cffi;
    # pytest, for the CUDA graph tests, its own four).
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .gpu/whl soundfile soxr cffi pycparser starlette uvicorn websockets pytest pluggy iniconfig packaging pygments \
        transformers==5.23.0 regex || exit 1  # the reference as its version here (the image has 5.17)
    du -sh .gpu
    ;;
run)
    [ -d .gpu/whl ] || { echo "no .gpu/: run 'prepare' here first, and carry .gpu"; exit 1; }
    device=${DEVICE:-cuda} python=${PYTHON:-python3}
    if [[ $device == cuda* ]]; then
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
        export PYTHONPATH=/tmp/site:$PWD/src
    else
        export PYTHONPATH=$PWD/src
    fi
    export HIGGS_SHARED_DIR=$PWD/.gpu/shared PYTHONUNBUFFERED=1
    out=${OUT:-/tmp/gpu-session} && mkdir -p "$out"
    if [ -n "${QUICK:-}" ]; then  # a check of the flow: the tiny model, a few seconds a step
        model=$PWD/../shared/fixtures/tiny-24k; mix=(--clips 6 --longest 3); counts=(1 4); many=(4); load=(--streams 2 --seconds 5)
        corpus=(6 4)
    else
        model=""; mix=(--clips 128 --longest 20); counts=(1 16 64 256 512 1024); many=(256 512 1024); load=(--streams 64 --seconds 30)
        corpus=(384 128)  # clips, shard size: three shards, so that decoding overlaps encoding
    fi
    step() {  # name, time limit (s), then the benchmark and its arguments
        local name=$1 limit=$2; shift 2
        echo "== $name ($(date -u +%T))"
        timeout "$limit" "$python" "$@" > "$out/$name.md" 2>&1
        local rc=$?
        echo "exit $rc after $SECONDS s in all"; tail -n 40 "$out/$name.md"
        return $rc
    }
    "$python" -c "import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    # The benchmarks' full-size model with random weights, made once (seeded) for every step.
    [ -n "$model" ] || model=$("$python" -c "import sys; sys.path.insert(0, 'benchmarks'); from common import prepare_model_and_inputs as p; print(p()[0])" | tail -n 1)
    [ -d "$model" ] || { echo "no model ($model): the benchmarks' model could not be made"; exit 1; }
    echo "model: $model, made after $SECONDS s"
    steps=" ${STEPS:-tests throughput memory streams profile serve corpus} "
    graphs=() graph_steps=()
    [[ $device == cuda* ]] && graphs=(--graphs) graph_steps=(--graph-steps "${load[1]}")
    case $steps in *" tests "*)
        step tests 40 -m pytest -q -p no:cacheprovider tests/test_graphed_steps.py \
            || { echo "(the CUDA graph tests failed: the steps below run without graphs)"; graphs=() graph_steps=(); } ;; esac
    case $steps in *" streams "*)
        step streams 90 benchmarks/streaming.py streams --model "$model" --device "$device" --counts "${counts[@]}" \
            --frames 40 --rounds 2 --push-batch "${graphs[@]}" ;; esac
    case $steps in *" products "*)  # the 1024-stream step with every conv a product: is cuDNN its cost?
        step products 45 benchmarks/streaming.py streams --model "$model" --device "$device" --counts "${many[@]}" \
            --push 1 --frames 20 --rounds 2 --push-batch --unfolded-elements $((2**28)) ;; esac
    case $steps in *" throughput "*)
        step throughput 140 benchmarks/throughput.py --model "$model" --device "$device" "${mix[@]}" --quality \
            --batch-sizes 8 32 --batch-seconds 320 640 ;; esac
    case $steps in *" memory "*)
        step memory 110 benchmarks/gpu_memory.py --model "$model" --device "$device" "${mix[@]}" ;; esac
    case $steps in *" workspace "*)  # is the float32 peak cuDNN's workspace? the same batches with it capped at 1 GiB
        CUDNN_CONV_WSCAP_DBG=1024 step workspace 45 benchmarks/throughput.py --model "$model" --device "$device" \
            "${mix[@]}" --precisions float32 --batch-sizes 8 32 --batch-seconds --reference no ;; esac
    case $steps in *" profile "*)
        step profile 35 benchmarks/profile_parts.py --model "$model" --device "$device" ;; esac
    case $steps in *" serve "*)
        step serve 60 benchmarks/serve_load.py --model "$model" --encoders 1 "${load[@]}" --server-args --device "$device" --max-streams "${load[1]}" \
            "${graph_steps[@]}" ;; esac
    case $steps in *" corpus "*)
        step corpus 75 benchmarks/corpus.py --model "$model" --engines command --device "$device" --clips "${corpus[0]}" \
            --longest 20 --shard-size "${corpus[1]}" ;; esac
    case $steps in *" overhead "*)
        step overhead 20 benchmarks/streaming.py overhead --model "$model" --device "$device" --frames 20 ;; esac
    ;;
*)
    echo "usage: bash benchmarks/gpu_session.sh prepare|run"; exit 2
    ;;
esac
