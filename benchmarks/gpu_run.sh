#!/usr/bin/env bash
# Every GPU measurement in one call, from the project's root on the device machine (../shared/gpu/README.md):
#   bash ../shared/gpu/prepare.sh            # here: data and wheels into .gpu/
#   device run, carry [".gpu"]:  bash .gpu/run.sh bash benchmarks/gpu_run.sh
# Results go to $OUT (or out/gpu): record_overhead.md, block_writer.md, own_loop.md, host_path.md, block1.md, checksum_cost.md, analysis_cost.md, writer_cpu.md, checksums_device.md, record_*.log, demo.log. Sections run in order
# of importance, each with its own time limit, so a slow one leaves the others' results.
set -u
out=${OUT:-out/gpu}; mkdir -p "$out"
export EMERGENCE_CACHE=/tmp/emergence-cache
section() { echo "== $1 ($(date +%T))" | tee -a "$out/sections.log"; }
section "recording overhead, 4 models, gzip, with PyTorch eager"
timeout 240 python3 benchmarks/record_overhead.py --trials 3 --torch --set schedule=every --set steps=5000 \
  --experiments learn_to_see:300,keras_fashion:600,vgg_bn:300,resnet8:300 | tee "$out/record_overhead.md"
section "emergence record keras_fashion (4,685 steps), the full loop"
timeout 90 python3 -m emergence record keras_fashion --out /tmp/runs --no-progress --overwrite > "$out/record_keras_fashion.log" 2>&1
tail -4 "$out/record_keras_fashion.log"
section "the same without periodic checkpoints, then without evaluations: what each costs the train phase"
timeout 60 python3 -m emergence record keras_fashion --out /tmp/runs --no-progress --overwrite --set checkpoint_every=0 \
  > "$out/record_keras_fashion_no_ckpt.log" 2>&1
timeout 60 python3 -m emergence record keras_fashion --out /tmp/runs --no-progress --overwrite --set checkpoint_every=0 \
  --set eval_every=0 > "$out/record_keras_fashion_no_ckpt_no_eval.log" 2>&1
grep -h "^time:" "$out"/record_keras_fashion*.log
section "README demo: record learn_to_see + replay, cold cache then warm"
for pass in cold warm; do
  rm -f /tmp/runs/learn_to_see.h5; rm -rf /tmp/runs/learn_to_see.ckpt /tmp/runs/learn_to_see
  t0=$(date +%s.%N)
  timeout 60 python3 -m emergence record learn_to_see --out /tmp/runs --no-progress > "$out/demo_record_$pass.log" 2>&1
  t1=$(date +%s.%N)
  timeout 60 python3 -m emergence replay /tmp/runs/learn_to_see.h5 > "$out/demo_replay_$pass.log" 2>&1
  t2=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" -v c="$t2" -v p="$pass" 'BEGIN { printf "demo %s: record %.1f s, replay %.1f s\n", p, b - a, c - b }' | tee -a "$out/demo.log"
  tail -3 "$out/demo_record_$pass.log"
done
section "the writer at the GPU's pace: vgg_bn blocks of real frames, with and without a thread running Python"
timeout 120 python3 benchmarks/block_writer.py --trials 2 --blocks 4 --switch 0.5 --encode auto,threads:8 | tee "$out/block_writer.md"
section "own loops (NNX and Linen examples, one dispatch a step: their Python runs beside the writer), recorded and not"
timeout 120 python3 benchmarks/own_loop_overhead.py --trials 3 --steps 200 | tee "$out/own_loop.md"
section "where the host time goes: the loop's and the writer's threads per step, by function (vgg_bn, keras_fashion)"
timeout 120 python3 benchmarks/host_path.py --experiment vgg_bn --steps 600 --compression gzip --set schedule=every --set steps=5000 | tee "$out/host_path.md"
timeout 90 python3 benchmarks/host_path.py --experiment keras_fashion --steps 2000 --compression gzip --set schedule=every --set steps=5000 | tee -a "$out/host_path.md"
section "one step per dispatch (block_steps=1) against blocks, learn_to_see and keras_fashion"
timeout 150 python3 benchmarks/record_overhead.py --trials 3 --experiments learn_to_see:300,keras_fashion:600 \
  --set schedule=every --set steps=5000 --also block_steps=1 | tee "$out/block1.md"
section "checksums: the encoder and the writer with and without them (16 host cores)"
timeout 90 python3 benchmarks/checksum_cost.py --trials 3 --loop-steps 0 | tee "$out/checksum_cost.md"
section "analysis statistics: by rows (the CPU backend's form) against one pass (this backend's)"
timeout 60 python3 benchmarks/analysis_cost.py --calls 15 | tee "$out/analysis_cost.md"
section "the writer thread's CPU per frame: checksums by the writer, given by the device; gzip by processes, threads"
timeout 120 python3 benchmarks/writer_cpu.py --trials 3 --processes 8 --experiments tiny,keras_fashion,vgg_bn | tee "$out/writer_cpu.md"
section "compression none: checksums on the device (auto there) against on the host, keras_fashion and vgg_bn"
timeout 150 python3 benchmarks/record_overhead.py --trials 3 --compression none --experiments keras_fashion:600,vgg_bn:300 \
  --set schedule=every --set steps=5000 --also checksums=host | tee "$out/checksums_device.md"
section "done"
