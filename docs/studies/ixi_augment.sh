#!/usr/bin/env bash
# Issue 10's check on real data: an IXI source model trained with and without intensity augmentation, scored on a
# simulated scanner (`data shift`) without adaptation and after fine-tuning the first layers on 1 scan.
# Usage: bash docs/studies/ixi_augment.sh OUT [SHARED_DATA]   (CPU schedule: 400 source steps, 100 fine-tune steps)
set -euo pipefail
OUT=${1:?output folder}; DATA=${2:-$(cd "$(dirname "$0")/../../.." && pwd)/shared/data}
mkdir -p "$OUT" && cd "$OUT"
fewshot-da data index folder "$DATA/ixi-hh" --domain ixi --out ixi.csv
fewshot-da data shift ixi.csv --domain ixi --n 16 --new-domain ixi-shift --out-dir shifted --out ixi-shift.csv
fewshot-da data split ixi-shift.csv --out splits.json
GRID=(--reorient-ras --spacing-mm 2 2 2 --crop 128 --batch-size 8 --tolerance 1 --tolerance 2 --quiet --num-threads 1)
SRC=(--epochs 8 --iters-per-epoch 50 --lr-steps 5:0.1 --seed 0)
FT=(--crop 128 --batch-size 8 --epochs 4 --iters-per-epoch 25 --lr-steps 2:0.1 --tolerance 1 --tolerance 2 --quiet --num-threads 1)
fewshot-da train --data ixi-shift.csv --splits splits.json --source ixi --arch dart20 "${GRID[@]}" "${SRC[@]}" \
  --out runs/src-plain
fewshot-da train --data ixi-shift.csv --splits splits.json --source ixi --arch dart20 "${GRID[@]}" "${SRC[@]}" \
  --augment intensity --augment-preset intensity --out runs/src-intensity
for src in plain intensity; do
  fewshot-da adapt --model runs/src-$src --target ixi-shift --strategy none "${FT[@]}" --out runs/$src-none
  fewshot-da adapt --model runs/src-$src --target ixi-shift --layers first --scans 1 "${FT[@]}" --out runs/$src-first
  # D_O: the same source model on the unshifted originals of the pair's test subjects
  ids=$(python -c "import yaml,sys; print(','.join(i.removesuffix('-shift') for i in yaml.safe_load(open(sys.argv[1]))['spec']['eval_ids']))" runs/$src-none/run.yaml)
  fewshot-da predict --model runs/src-$src --data ixi.csv --ids "$ids" --tolerance 1 --tolerance 2 --quiet \
    --out runs/$src-originals
done
