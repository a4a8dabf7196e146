"""Recipe: new trials of listeners the model trained on, validated on whole trials of theirs.

    python train.py --config=configs/seen_listeners.py --data_dir=../shared/data/dtu \
        --val_recordings=['*_007'] --test_recordings=['*_008','*_009'] --split=whole
Early stopping on validation r suits this case: the validation data is whole trials of the same
listeners. benchmark.py's 'seen' protocol trains with it.
"""
lr = 3e-4  # Adam learning rate
epochs = 30  # at most
select = "best_val"  # keep the epoch with the best validation r ...
patience = 10  # ... stopping after 10 epochs without a better one
avg_epochs = 1  # no weight averaging
