#!/usr/bin/env bash
# The pipeline stage by stage on a small synthetic dataset (what `hpa demo` does in one
# command), with the CPU-sized settings the demo uses. Run from a folder of your choice
# with `hpa` on PATH:  bash examples/pipeline.sh [WORKDIR]
set -euo pipefail
work="${1:-hpa-walkthrough}"
mkdir -p "$work" && cd "$work"
export OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1

hpa synth data --n-images 120 --size 128 --test-images 30 --force
hpa ingest data --store hpa.zarr --cache-size 128
hpa segment --store hpa.zarr --preview 4
hpa dedup --store hpa.zarr
hpa fold --store hpa.zarr -k 2
hpa fold --store hpa.zarr --cells
for f in 0 1; do
  hpa train-image --store hpa.zarr --fold $f --out runs/image/fold$f --backbone resnet18 --img-size 128 \
    --batch-size 16 --accum 1 --epochs 8 --schedule constant --lr-mult 200 --negatives all
done
hpa pseudolabel --store hpa.zarr --models 'runs/image/fold*/best.pt' --run oof
hpa denoise --store hpa.zarr --run oof -o k=20
# known positives from the labelled images' unusual cells (the demo's rule; see the README)
hpa select-mitotic --store hpa.zarr --run oof --top 0 --known outliers --per-image 2 --neighbours 8 \
  --min-hits 2 --out selection
hpa select-mitotic --store hpa.zarr --run oof --accept selection/mitotic_oof.csv   # after reviewing the gallery
hpa train-cell --store hpa.zarr --fold 0 --labels oof --selection mitotic --mask-labels --mask-keep 11 \
  --rescale-in-image \
  --init-from runs/image/fold0/best.pt --img-size 64 --batch-size 32 --accum 1 --epochs 4 \
  --schedule constant --lr-mult 50
hpa predict --store hpa.zarr --models runs/cell/fold0/best.pt --export cells.csv --overlays 4
hpa submit --store hpa.zarr --out submission.csv
hpa evaluate --truth data/test_truth.csv --submission submission.csv
hpa info --store hpa.zarr
