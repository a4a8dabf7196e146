"""Starting point for fine-tuning the published VLAAI weights on your data (not a measured recipe:
the published weights are not in this repository, so no fine-tuning recipe has been chosen on
validation data yet).

    python train.py --config=configs/finetune_vlaai.py --init=vlaai.h5 --data_dir=... --run_dir=runs_finetune
"""
model = "vlaai"  # the architecture of the published weights
lr = 1e-4  # a third of the training recipe's: start close to the published weights
epochs = 5  # a few passes
select = "last"  # keep the final weights ...
avg_epochs = 1  # ... without averaging
