#!/usr/bin/env bash
# The Kaggle-size pipeline on a SLURM cluster: one job array per long stage, each task does
# its part of the store (hpa reads SLURM_ARRAY_TASK_ID / _COUNT itself: no --shard needed),
# and the last task to finish closes the stage (the cells table after segment, pairs and
# groups after dedup, the flags after negatives). Every task can be killed and resubmitted:
# it redoes only its unfinished blocks. The store must be on a file system all nodes share.
#
#   bash examples/slurm_array.sh       # on the login node: submits the chain below (afterok dependencies)
#
# Adapt the partition, times and paths; STORE and DATA are read from the environment.
set -euo pipefail
STORE=${STORE:-/shared/hpa/hpa.zarr}
DATA=${DATA:-/shared/hpa/kaggle}
PUBLIC=${PUBLIC:-/shared/hpa/public}
HPA=${HPA:-hpa}

# ingest once (one process at a time appends rows; several ingests are safe but not faster)
ingest=$(sbatch --parsable --job-name hpa-ingest --cpus-per-task 16 --time 12:00:00 --wrap \
  "$HPA ingest $DATA --store $STORE --cache-size 512 -j 16 && \
   $HPA ingest $PUBLIC --layout public --csv $PUBLIC/kaggle_2021.csv --store $STORE -j 16")
# segment on 8 GPUs: 8 array tasks, each on one GPU
seg=$(sbatch --parsable --dependency afterok:$ingest --job-name hpa-segment --array 0-7 --gres gpu:1 \
  --cpus-per-task 8 --time 12:00:00 --wrap \
  "$HPA segment --store $STORE --segmenter hpa-unet --nuclei-model \$HPA_NUCLEI_MODEL --cell-model \$HPA_CELL_MODEL -b 8")
# CPU stages split 16 ways
neg=$(sbatch --parsable --dependency afterok:$seg --job-name hpa-negatives --array 0-15 --cpus-per-task 2 \
  --time 4:00:00 --wrap "$HPA negatives --store $STORE --png ${STORE%.zarr}-negatives.png -q")
dup=$(sbatch --parsable --dependency afterok:$ingest --job-name hpa-dedup --array 0-15 --cpus-per-task 2 \
  --time 4:00:00 --wrap "$HPA dedup --store $STORE -q")
fold=$(sbatch --parsable --dependency afterok:$neg:$dup --job-name hpa-fold --time 1:00:00 --wrap \
  "$HPA fold --store $STORE -k 5 && $HPA fold --store $STORE --cells")
# image models: one job per fold, 4 GPUs each with torchrun (DDP; --resume continues after a requeue)
train=$(sbatch --parsable --dependency afterok:$fold --job-name hpa-train-image --array 0-4 --gres gpu:4 \
  --cpus-per-task 32 --time 2-00:00:00 --requeue --wrap \
  "torchrun --standalone --nproc_per_node 4 -m hpacli.cli.app train-image --store $STORE \
     --fold \$SLURM_ARRAY_TASK_ID --out runs/image/fold\$SLURM_ARRAY_TASK_ID --accum 50 --resume -q")
# pseudo-labels on 8 GPUs (the array gives each task its part; the models of the 5 folds)
pl=$(sbatch --parsable --dependency afterok:$train --job-name hpa-pseudolabel --array 0-7 --gres gpu:1 \
  --cpus-per-task 8 --time 12:00:00 --wrap \
  "$HPA pseudolabel --store $STORE --models 'runs/image/fold*/best.pt' --run oof -b 64 -j 8 -q")
dn=$(sbatch --parsable --dependency afterok:$pl --job-name hpa-denoise --cpus-per-task 16 --mem 32G \
  --time 12:00:00 --wrap "$HPA denoise --store $STORE --run oof -q")
echo "submitted: ingest $ingest, segment $seg, negatives $neg, dedup $dup, fold $fold, train-image $train," \
     "pseudolabel $pl, denoise $dn (then select-mitotic, review, train-cell, predict)"
