#!/usr/bin/env bash
# Every GPU measurement of one lent-GPU session, in one call (results: benchmarks/RESULTS.md).
#
#   bash benchmarks/gpu_session.sh OUT_DIR [TRAIN_MINUTES]
#
# 1. Three toy base models trained side by side (each run is launch-bound at 64 px, so one GPU holds all three):
#    "cpu" is recipes/toy_base.yaml with the UNet samples a 2-core CPU can afford in under 2 h; "mid" and
#    "wide" are wider, with larger batches (at 64 px a GPU step costs the same at batch 64 or 256). Every run
#    stops at TRAIN_MINUTES and records the steps it made. Each model comes back as a .tgz in 15 MB parts.
# 2. Their prompt fidelity and toy FID (benchmarks/toy_base_quality.py) at four guidance scales.
# 3. The GPU speed benchmarks, each under its own time limit: reward cost (Latent-CLIP vs decode + CLIP),
#    SLD speed, Geom-Erasing training step.
# Wheels the GPU image lacks go in .whl/ (diffusers, pydantic, segno, ...) and .whl-datasets/ (datasets and its
# needs, only for the training benchmark); the script installs them into /tmp when those folders exist.
set -u
OUT=${1:?usage: gpu_session.sh OUT_DIR [TRAIN_MINUTES]}
MINUTES=${2:-5}
mkdir -p "$OUT" outputs/gpu
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30 PYTHONPATH="$PWD:${PYTHONPATH:-}"
stamp() { echo "[$(date +%T)] $*"; }

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)"
python3 -c "import erasure.toy.base, erasure.evaluation.icr" || exit 1

stamp "toy base models, $MINUTES min each"
base() {
    local name=$1
    shift
    OMP_NUM_THREADS=4 python3 -m erasure.toy.base --config recipes/toy_base.yaml "out_dir=outputs/gpu/$name" \
        "work_dir=outputs/gpu/work-$name" mixed_precision=bf16 "time_limit_minutes=$MINUTES" "$@" \
        >"outputs/gpu/$name.log" 2>&1
    stamp "$name finished (exit $?): $(tail -c 300 "outputs/gpu/$name.log" | tr '\r' '\n' | tail -n 2)"
}
base cpu unet_steps=8000 unet_batch_size=64 &
base mid num_images=20000 vae_steps=4000 vae_batch_size=64 "unet_channels=[64, 128, 128]" unet_batch_size=128 \
    unet_steps=40000 weights_dtype=float16 &
base wide num_images=20000 vae_steps=4000 vae_batch_size=64 "unet_channels=[64, 128, 192]" unet_batch_size=256 \
    unet_learning_rate=1e-3 unet_steps=40000 weights_dtype=float16 &
wait

stamp "quality"
models=()
for name in cpu mid wide; do
    [ -f "outputs/gpu/$name/model_index.json" ] && cp "outputs/gpu/$name.log" "outputs/gpu/$name/" && models+=("outputs/gpu/$name")
done
python3 benchmarks/toy_base_quality.py "${models[@]}" --guidance 3 5 7.5 10 --out "$OUT/quality.json"
for model in "${models[@]}"; do
    tar -czf - -C outputs/gpu "$(basename "$model")" | split -b 15M - "$OUT/toy-sd-$(basename "$model").tgz."
done
ls -la "$OUT"

stamp "benchmarks"
{
    timeout 60 python3 benchmarks/reward_cost.py --model sd15 --device cuda --dtype float16 --batch-size 4
    timeout 90 python3 benchmarks/sld_speed.py --steps 25 --repeats 2
    if [ -d .whl-datasets ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-datasets \
            .whl-datasets/*.whl
        PYTHONPATH="$PYTHONPATH:/tmp/site-datasets" timeout 60 python3 benchmarks/train_speed.py --model sd15 \
            --device cuda --resolution 512 --batch-size 4 --mixed-precision fp16 --steps 10
    fi
} 2>&1 | grep -v -i warn | tee "$OUT/benchmarks.txt"
stamp "done"
