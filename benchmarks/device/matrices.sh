#!/bin/bash
# One device call (benchmarks/GENERALIZATION.md, "On a lent GPU"): unpack the lung-cropped copies that
# benchmarks/device/pack.py made, then one leave-one-source-out matrix per recipe and seed, all in parallel.
# RECIPES: "name:flags;name:flags" (flags added to the R7 recipe below; the token @mask trains and scores on the
# copy that --crop lung-mask gives, unpacked to $DATA-mask); SEEDS: "42 7 1".
set -u
export PYTHONPATH=$PWD/src:$PWD/.devdata/site PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2 MPLBACKEND=Agg
DATA=${DATA:-/tmp/data}; RUNS=${RUNS:-/tmp/runs}; LIMIT=${LIMIT:-470}; NPROC=${NPROC:-16}
LOG=$OUT/log.txt; mkdir -p $RUNS
{ date -u; nvidia-smi -L; nproc; python3 -c "import torch, lightning, torchvision, sklearn, skimage, timm; print('torch', torch.__version__, 'lightning', lightning.__version__, 'tv', torchvision.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"; } >>$LOG 2>&1
python3 benchmarks/device/unpack.py .devdata/data $DATA $NPROC $DATA-mask >>$LOG 2>&1 || { echo UNPACK FAILED; tail -20 $LOG; exit 3; }
python3 -m covidct crosssource --help >/dev/null 2>>$LOG || { echo IMPORT FAILED; tail -30 $LOG; exit 4; }
# R7 (configs/multisource.yaml) with --crop none: the copies are already cropped by covidct's CropToBody("lung")
COMMON="--model efficientnet_lite0 --source-balance --lr 0.0003 --label-smoothing 0.1 --grayscale --augment study --crop none --intensity none --monitor val_auc_mean"
RECIPES=${RECIPES:-"short:--epochs 10 --patience 4 --samples-per-epoch 640 --num-workers 1;full:--epochs 20 --patience 6 --num-workers 3"}
SEEDS=${SEEDS:-42 7 1}
t0=$(date +%s)
IFS=';' read -ra LIST <<<"$RECIPES"
for recipe in "${LIST[@]}"; do
  name=${recipe%%:*}; flags=${recipe#*:}; data=$DATA
  case "$flags" in *@mask*) data=$DATA-mask; flags=${flags//@mask/} ;; esac
  for s in $SEEDS; do
    timeout $LIMIT python3 -m covidct crosssource --source covid-ct=$data/covid-ct --source sars-cov-2-ct=$data/sars-cov-2-ct $COMMON $flags --seed $s --out-dir $RUNS/$name-s$s >$RUNS/$name-s$s.log 2>&1 &
  done
done
wait
echo "matrices done in $(( $(date +%s) - t0 )) s" >>$LOG
for f in $RUNS/*.log; do echo "== $f"; grep -E "epoch [0-9]+/|Mean held-out|Error|error|Traceback" $f | tail -2; done >>$LOG 2>&1
cd $RUNS && tar czf $OUT/results.tar.gz --exclude='*.ckpt' --exclude='*.pt' --exclude='*.pth' --exclude='*.safetensors' --exclude='*.onnx' --exclude='*.png' --exclude='*.html' .
ls -la $OUT; tail -40 $LOG
