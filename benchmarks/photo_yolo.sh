#!/usr/bin/env bash
# The real-photo watermark/text/QR YOLO (assets/detectors/photo_yolo.safetensors) and its held-out measurement.
#
#   apt-get install lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds   # the clean photos
#   bash benchmarks/photo_yolo.sh            # about 40 minutes on one CPU thread; work files in outputs/photo-yolo
#
# Clean photos come from Debian wallpaper packages, split by package: the Lomiri wallpapers train, MATE's nature
# photos are held out (other cameras, other scenes). Pasted concepts are split too: the training set draws only the
# training fonts and words, the held-out set only the held-out ones (datasets_icd.paste, PasteConfig.split).
set -euo pipefail
export HF_HUB_OFFLINE=1 YOLO_OFFLINE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
OUT=${OUT:-outputs/photo-yolo}
BG=/usr/share/backgrounds
TRAIN_PHOTOS=(Bridge_by_Sander_Klootwijk Dragonfly_by_Bolly Picture_0B_by_freespace Picture_1A_by_freespace
  Wine_by_Jakkub_Mede aitzgorri_by_Aitzol_Berasategi friends_by_Aitzol_Berasategi life_by_Aitzol_Berasategi
  picosdeeuropa_by_Aitzol_Berasategi seeding_by_Clements_Engelhardt sunset_by_Aitzol_Berasategi
  Kleiber_by_Lukas_Baubkus)
HELDOUT_PHOTOS=(Aqua Blinds Dune FreshFlower Garden GreenMeadow LadyBird RainDrops Storm TwoWings Wood YellowFlower)

mkdir -p "$OUT/photos/train" "$OUT/photos/heldout"
for name in "${TRAIN_PHOTOS[@]}"; do cp -n "$BG/$name.jpg" "$OUT/photos/train/"; done
for name in "${HELDOUT_PHOTOS[@]}"; do cp -n "$BG/mate/nature/$name.jpg" "$OUT/photos/heldout/"; done

# 1,200 training images: 100 pasted crops of each training photo, at most 640 px a side
[ -f "$OUT/icd-train/build.json" ] || icd build --source "folder:$OUT/photos/train" \
  --paste watermark=0.5 text=0.3 qrcode=0.2 \
  --paste-config split=train repeats=100 crop_rate=0.7 max_side=640 seed=0 --out "$OUT/icd-train"
# held out: 25 pasted crops of each held-out photo, and 25 clean crops (false alarms)
[ -f "$OUT/icd-heldout/build.json" ] || icd build --source "folder:$OUT/photos/heldout" \
  --paste watermark=0.5 text=0.3 qrcode=0.2 \
  --paste-config split=heldout repeats=25 crop_rate=0.7 max_side=640 seed=1 --out "$OUT/icd-heldout"
[ -f "$OUT/icd-clean/build.json" ] || icd build --source "folder:$OUT/photos/heldout" \
  --paste watermark=0 text=0 qrcode=0 \
  --paste-config split=heldout repeats=25 crop_rate=0.7 max_side=640 seed=2 --out "$OUT/icd-clean"

# fine-tune the toy weights (same classes; nothing downloaded) at 416 px for 36 minutes, one thread, one worker
detectors train-yolo --dataset "$OUT/icd-train" --out "$OUT/yolo" --init assets/detectors/toy_yolo.safetensors \
  --model yolov8n.yaml --imgsz 416 --epochs 30 --hours "${HOURS:-0.6}" --batch 16 --workers 1 --device cpu --val-fraction 0.05

for set in heldout clean; do
  detectors evaluate --detector "yolo:$OUT/yolo/yolo.safetensors" --dataset "$OUT/icd-$set" --out "$OUT/eval/yolo-$set"
  detectors evaluate --detector ocr --dataset "$OUT/icd-$set" --out "$OUT/eval/ocr-$set"
  detectors evaluate --detector qr --dataset "$OUT/icd-$set" --out "$OUT/eval/qr-$set"
done
