#!/usr/bin/env bash
# Every GPU measurement, in two device calls of under 10 minutes each (../shared/gpu/README.md), from the
# project's root on the device machine:
#   bash ../shared/gpu/prepare.sh                                   # here: data and wheels into .gpu/
#   device run 1, carry [".gpu"]:  bash .gpu/run.sh bash benchmarks/gpu_run.sh targets
#   device run 2, carry [".gpu"]:  bash .gpu/run.sh bash benchmarks/gpu_run.sh causes
# `targets`: the issue's targets (recording overhead with PyTorch beside it, the full loop, the README demo);
# `causes`: where the time goes (the writer, malloc's settings, own loops, the host path, one step per
# dispatch, checksums, the analysis statistics), the two that decide a default first (encoding threads or
# processes; malloc kept or not); `all`: both, in order. Results go to $OUT (or out/gpu): one file per
# section, named below, and sections.log. A section starts only if its time limit fits what is left of
# BUDGET_S (default 540 s, under the device's 600 s per call; with 15 minutes of device time for a whole task,
# run 2 gets what run 1 and the start-ups leave: `BUDGET_S=... bash ...`); the ones that did not fit are
# listed as SKIPPED, so a later call can run them (`bash benchmarks/gpu_run.sh NAME...` runs the named
# sections alone).
set -u
out=${OUT:-out/gpu}; mkdir -p "$out"
export EMERGENCE_CACHE=/tmp/emergence-cache
start=$(date +%s); budget=${BUDGET_S:-540}

# section NAME LIMIT_S COMMAND: runs COMMAND (a bash command line) under `timeout LIMIT_S`, if it fits.
section() {
  local name=$1 limit=$2 cmd=$3 left=$(( budget - ($(date +%s) - start) ))
  if [ "$left" -lt "$limit" ]; then
    echo "== SKIPPED $name (needs up to $limit s, $left s left)" | tee -a "$out/sections.log"; return
  fi
  echo "== $name ($(date +%T), up to $limit s)" | tee -a "$out/sections.log"
  timeout "$limit" bash -c "$cmd"
  echo "== $name: exit $? after $(( $(date +%s) - start )) s in all" | tee -a "$out/sections.log"
}

overhead() { section overhead 240 "python3 benchmarks/record_overhead.py --trials 3 --torch --set schedule=every \
  --set steps=5000 --experiments learn_to_see:300,keras_fashion:600,vgg_bn:300,resnet8:300 | tee '$out/record_overhead.md'"; }
full_loop() {  # emergence record keras_fashion (4,685 steps), then without checkpoints, then without evaluations
  section full_loop 150 "python3 -m emergence record keras_fashion --out /tmp/runs --no-progress --overwrite \
    > '$out/record_keras_fashion.log' 2>&1; tail -4 '$out/record_keras_fashion.log';
  python3 -m emergence record keras_fashion --out /tmp/runs --no-progress --overwrite --set checkpoint_every=0 \
    > '$out/record_keras_fashion_no_ckpt.log' 2>&1;
  python3 -m emergence record keras_fashion --out /tmp/runs --no-progress --overwrite --set checkpoint_every=0 \
    --set eval_every=0 > '$out/record_keras_fashion_no_ckpt_no_eval.log' 2>&1;
  grep -h '^time:' '$out'/record_keras_fashion*.log"; }
demo() {  # the README demo: record learn_to_see + replay, cold compilation cache then warm
  section demo 150 "for pass in cold warm; do
    rm -rf /tmp/runs/learn_to_see.h5 /tmp/runs/learn_to_see.ckpt /tmp/runs/learn_to_see
    [ \$pass = cold ] && rm -rf \$EMERGENCE_CACHE/jax
    t0=\$(date +%s.%N); python3 -m emergence record learn_to_see --out /tmp/runs --no-progress > '$out'/demo_record_\$pass.log 2>&1
    t1=\$(date +%s.%N); python3 -m emergence replay /tmp/runs/learn_to_see.h5 > '$out'/demo_replay_\$pass.log 2>&1
    t2=\$(date +%s.%N)
    awk -v a=\$t0 -v b=\$t1 -v c=\$t2 -v p=\$pass 'BEGIN { printf \"demo %s: record %.1f s, replay %.1f s\\n\", p, b - a, c - b }' | tee -a '$out/demo.log'
    tail -3 '$out'/demo_record_\$pass.log
  done"; }
block_writer() {  # the writer at the GPU's pace, vgg_bn blocks of real frames, with and without a thread running Python; auto (threads, the built-in loop's) against processes
  section block_writer 120 "python3 benchmarks/block_writer.py --trials 2 --blocks 4 --switch 0.5 --encode auto,processes:8 | tee '$out/block_writer.md'"; }
writer_cpu() {  # the writer thread's CPU per frame: checksums by the writer or the device's; gzip by processes or threads
  section writer_cpu 100 "python3 benchmarks/writer_cpu.py --trials 3 --processes 8 --experiments tiny,keras_fashion,vgg_bn | tee '$out/writer_cpu.md'"; }
host_memory() {  # freed host memory kept for reuse (the CLI's default) against glibc's defaults, fresh processes
  section host_memory 150 "python3 benchmarks/host_memory.py --trials 1 --experiments learn_to_see:1000,keras_fashion:2000 \
    | tee '$out/host_memory.md'"; }
checksums_device() {  # compression none: checksums on the device (auto there) against on the host
  section checksums_device 120 "python3 benchmarks/record_overhead.py --trials 3 --compression none --set schedule=every \
    --set steps=5000 --experiments keras_fashion:600,vgg_bn:300 --also checksums=host | tee '$out/checksums_device.md'"; }
host_path() {  # the loop's and the writer's threads per step, by function (vgg_bn, keras_fashion)
  section host_path 150 "python3 benchmarks/host_path.py --experiment vgg_bn --steps 600 --compression gzip --set schedule=every \
    --set steps=5000 | tee '$out/host_path.md'; python3 benchmarks/host_path.py --experiment keras_fashion --steps 2000 \
    --compression gzip --set schedule=every --set steps=5000 | tee -a '$out/host_path.md'"; }
own_loop() {  # NNX and Linen examples, one dispatch a step: their Python runs beside the writer
  section own_loop 100 "python3 benchmarks/own_loop_overhead.py --trials 3 --steps 200 | tee '$out/own_loop.md'"; }
block1() {  # one step per dispatch (block_steps=1) against blocks
  section block1 150 "python3 benchmarks/record_overhead.py --trials 3 --experiments learn_to_see:300,keras_fashion:600 \
    --set schedule=every --set steps=5000 --also block_steps=1 | tee '$out/block1.md'"; }
checksum_cost() { section checksum_cost 90 "python3 benchmarks/checksum_cost.py --trials 3 --loop-steps 0 | tee '$out/checksum_cost.md'"; }
analysis_cost() { section analysis_cost 60 "python3 benchmarks/analysis_cost.py --calls 15 | tee '$out/analysis_cost.md'"; }

targets=(overhead full_loop demo)
causes=(block_writer host_memory writer_cpu checksums_device host_path own_loop block1 checksum_cost analysis_cost)
case "${1:-all}" in
  targets) run=("${targets[@]}") ;;
  causes) run=("${causes[@]}") ;;
  all) run=("${targets[@]}" "${causes[@]}") ;;
  *) run=("$@") ;;
esac
for name in "${run[@]}"; do
  if ! declare -F "$name" >/dev/null; then
    echo "gpu_run.sh: unknown section $name; expected targets, causes, all or any of: ${targets[*]} ${causes[*]}" >&2; exit 2
  fi
  "$name"
done
echo "== done after $(( $(date +%s) - start )) s" | tee -a "$out/sections.log"
