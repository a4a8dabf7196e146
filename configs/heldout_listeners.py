"""Recipe: listeners (and speech) the model never trained on, the case most users have.

The same values as config.py's defaults, written out so a protocol names its recipe:
    python train.py --config=configs/heldout_listeners.py --data_dir=... --exclude_subjects=[S10,S11,S12]
Evidence: docs/model.md, "The default recipe".
"""
lr = 3e-4  # Adam learning rate
epochs = 10  # train every epoch: no early stopping on a 5 s validation piece
select = "last"  # keep the final weights ...
avg_epochs = 5  # ... averaged over the last 5 epochs
