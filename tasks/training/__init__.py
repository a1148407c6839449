"""What the train stage (tasks/train.py) needs that is not its loop.

    launch       the DVC side: checks before any rank starts, DeepSpeed's launcher, signals
    engine       the DeepSpeed config derived from the train params, the engine, local clipping
    data         the split tensors and each epoch's order of batches (a function of seed and epoch)
    loss         the loss, the L1 term, validation, improvement
    state        the loop's state, one typed object saved in every checkpoint
    run          the run's model config, fingerprint and folder; where it starts; the model file
    checkpoints  checkpoints a crash cannot spoil: markers, newest-good, retention, generators
    reshard      an unfinished run continued with another number of processes
    agreement    what every rank decides together: SIGTERM, a non-finite loss
    live         per-epoch metrics through DVCLive
"""
