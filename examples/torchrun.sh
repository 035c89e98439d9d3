#!/usr/bin/env bash
# Several GPUs of one machine (or several machines) with torchrun: the same `hpa` commands.
# The sharded stages read RANK / WORLD_SIZE (each process does its part; LOCAL_RANK picks its
# GPU) and the process that finishes last closes the stage; training runs DDP (one optimizer
# step over all processes; --resume continues a killed run exactly, on as many processes).
set -euo pipefail
STORE=${STORE:-hpa.zarr}
N=${N:-$(nvidia-smi -L 2>/dev/null | wc -l)}
N=${N:-1}
run() { torchrun --standalone --nproc_per_node "$N" -m hpacli.cli.app "$@"; }

run segment --store "$STORE" --segmenter hpa-unet -b 8              # --shard auto is the default under torchrun
run negatives --store "$STORE" -q
run dedup --store "$STORE" -q
for f in 0 1 2 3 4; do                                               # DDP: batch 8 per GPU, accumulation over all
  run train-image --store "$STORE" --fold $f --out runs/image/fold$f --accum $((200 / N)) --resume
done
run pseudolabel --store "$STORE" --models 'runs/image/fold*/best.pt' --run oof -b 64
hpa denoise --store "$STORE" --run oof                               # one process (CPU)
for f in 0 1 2 3 4; do
  run train-cell --store "$STORE" --fold $f --labels oof --init-from runs/image/fold$f/best.pt \
    --out runs/cell/fold$f --accum $((4 / N > 0 ? 4 / N : 1)) --resume
done
run predict --store "$STORE" --models 'runs/cell/fold*/best.pt'
hpa submit --store "$STORE" --out submission.csv
# Several machines: the same lines with `torchrun --nnodes M --node_rank R --rdzv-backend c10d
# --rdzv-endpoint HOST:29400 --nproc_per_node N` on each machine (the store on a shared file system).
