#!/usr/bin/env bash
# `make demo`: the segmenter node on a sample camera stream, for DEMO_SECONDS, then a clean stop.
#
#   1. sets up (scripts/setup.sh; quick when done before);
#   2. starts the node on /demo/image, and a camera streaming real photos there at 30 Hz;
#   3. a watcher prints rates and each frame's segments, swaps the vocabulary after a few
#      frames, and writes every overlay image to $DEMO_OUTPUT (default demo_output/);
#   4. after DEMO_SECONDS (default 60) everything is stopped with Ctrl-C, as a user would.
#
# Settings (environment): DEMO_SECONDS, DEMO_MODEL (convnext_large), DEMO_SHORT_SIDE (320: the
# official 800 takes several seconds a frame on a laptop CPU), DEMO_MODE, DEMO_OUTPUT.
# Without an FC-CLIP checkpoint (`fcclip-ros download`) the network runs with RANDOM weights.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup.sh
py="$root/.venv/bin/python"

seconds="${DEMO_SECONDS:-60}"
model="${DEMO_MODEL:-convnext_large}"
short_side="${DEMO_SHORT_SIDE:-320}"
out="${DEMO_OUTPUT:-demo_output}"
say() { printf '[demo] %s\n' "$*"; }
# Fast DDS (the default RMW) drops most best-effort camera-sized frames between processes with
# its builtin transports; the shipped profile (shared memory with room for them) delivers all.
export FASTDDS_DEFAULT_PROFILES_FILE="${FASTDDS_DEFAULT_PROFILES_FILE:-$root/config/fastdds_large_images.xml}"

checkpoint="$("$py" -c "from fcclip_ros.cache import OFFICIAL_CHECKPOINTS, checkpoint_path as p
print(p('$model') if '$model' in OFFICIAL_CHECKPOINTS else 'none (no official weights for $model)')")"
if [[ -f "$checkpoint" ]]; then
  weights=auto clip_weights=auto mode="${DEMO_MODE:-panoptic}"
  say "using the FC-CLIP checkpoint $checkpoint"
else
  # Random FC-CLIP weights vote "void" for every query, so panoptic mode would show nothing;
  # semantic mode labels every pixel, which at least shows the whole pipeline working.
  weights=random clip_weights=random mode="${DEMO_MODE:-semantic}"
  cat <<EOF
[demo] ======================================================================================
[demo]  NO FC-CLIP CHECKPOINT at $checkpoint
[demo]  The network runs with RANDOM WEIGHTS: every label, score and mask below is MEANINGLESS.
[demo]  This shows the pipeline (camera -> node -> topics -> overlays), not segmentation quality.
[demo]  Get the real weights with \`fcclip-ros download --model $model\` (needs the network).
[demo] ======================================================================================
EOF
fi

mkdir -p "$out"
rm -f "$out"/overlay_*.png
# A vocabulary matching the photos; small, so a first run encodes it in seconds on a CPU.
vocabulary='[person, cat, "cup, mug", rocket, flag, table, bottle, box, book, "wall [stuff]", "sky [stuff]", "floor [stuff]", "grass [stuff]", "road [stuff]"]'

say "model $model, weights $weights, $mode mode, short side $short_side, for $seconds s"
"$py" -m fcclip_ros.ros.main --ros-args --params-file config/segment.yaml \
  -p "image_topics:=[/demo/image]" -p "model:=$model" -p "weights:=$weights" \
  -p "clip_weights:=$clip_weights" -p "mode:=$mode" -p "input_short_side:=$short_side" \
  -p "vocabulary:=$vocabulary" >"$out/node.log" 2>&1 &
node_pid=$!
"$py" -m fcclip_ros.ros.demo_camera camera --ros-args -p topic:=/demo/image >"$out/camera.log" 2>&1 &
camera_pid=$!

stop() {
  for pid in "$camera_pid" "$node_pid"; do
    kill -INT "$pid" 2>/dev/null || true
  done
  wait "$camera_pid" "$node_pid" 2>/dev/null || true
}
trap stop EXIT

say "node log: $out/node.log (the model takes a little while to build on a CPU)"
status=0
"$py" -m fcclip_ros.ros.demo_camera watch --camera /demo/image --seconds "$seconds" --out "$out" \
  --node-pid "$node_pid" || status=$?
stop
trap - EXIT
if [[ $status -ne 0 ]]; then
  say "no segmentation came out; the end of the node's log:"
  tail -n 20 "$out/node.log"
  exit "$status"
fi
say "stopped cleanly; $(ls "$out"/overlay_*.png 2>/dev/null | wc -l) overlay PNGs in $out/"
